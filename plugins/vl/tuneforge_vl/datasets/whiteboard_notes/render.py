"""Draw a whiteboard: a meeting's topic, date, attendees, decisions and action items.

``render(board, style, seed)`` returns the picture (RGB, ``WIDTH`` x ``HEIGHT``) and
where each piece of text went. Everything random comes from ``random.Random(seed)``
and the only font is the one inside Pillow (``ImageFont.load_default(size)``, Aileron,
laid out without Raqm), so a seed gives the same pixels on every machine with the same
Pillow.

The layout, on a grid of ``GRID`` x ``GRID`` cells (each word starts at a cell's left
edge, each character of a date has its own cell): the topic underlined on the first
row, the date on the second, a "Present:" line, the decisions in a hand-drawn box, an
arrow down (where a row is spare) and one sticky note per action item (owner and task,
then the due date). A ``Style`` says how messy the
marker is: ``CLEAR`` is what a small vision tower learns from (upright glyphs, thick
strokes, a slight wobble), ``HARD`` is a photo of a hurried board (glyphs rotated,
sheared and resized one by one, thinner and paler ink, the board tilted and shrunk in
the frame, glare, smudges, noise and blur).
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

# 4:3 like a phone photo, and both sides multiples of 28 (a Qwen2-VL patch of 14 merged
# 2x2), so no processor needs to resize: 16 x 12 = 192 merged image tokens, few enough
# to train on a CPU, while the body text stays 18-26 px high.
WIDTH, HEIGHT = 448, 336
# The writing is laid out on a grid of GRID x GRID cells (32 x 24 px: 32 x 32 once a
# processor squashes the board square, the default model's patches): each word starts at
# a cell's left edge and each digit of a date has a cell of its own, so what is written
# in a cell is the same from board to board in the clear style.
GRID = 14
CELL_WIDTH, CELL_HEIGHT = WIDTH // GRID, HEIGHT // GRID

BOARD = (247, 247, 243)  # off-white
WALL = (118, 112, 104)
INKS = {  # marker colours: fresh, and faded (HARD)
    "black": ((28, 28, 32), (70, 70, 78)),
    "blue": ((24, 58, 160), (80, 110, 190)),
    "red": ((176, 30, 30), (200, 90, 80)),
    "green": ((22, 112, 52), (80, 150, 95)),
}
STICKIES = ((255, 234, 110), (255, 186, 206), (190, 238, 168), (178, 214, 255), (255, 204, 140))


@dataclass(frozen=True)
class Style:
    name: str
    glyph_rotation: float  # largest rotation of one glyph, degrees
    glyph_jitter: float  # largest baseline shift of one glyph, px
    size_jitter: float  # largest relative change of one glyph's size
    shear: float  # largest slant of a line of writing (x shift per px of height)
    bold: int  # stroke width of the marker
    faded: bool  # paler inks
    sticky_tilt: float  # largest rotation of a sticky note, degrees
    board_tilt: float  # largest rotation of the whole board in the photo, degrees (0: a flat scan)
    glare: bool
    smudges: int  # faint erased marks
    noise: int  # amplitude of the per-pixel noise
    blur: float  # Gaussian blur radius


CLEAR = Style("clear", glyph_rotation=0.0, glyph_jitter=1.0, size_jitter=0.0, shear=0.0, bold=1, faded=False,
              sticky_tilt=0.0, board_tilt=0.0, glare=False, smudges=0, noise=0, blur=0.0)
HARD = Style("hard", glyph_rotation=9.0, glyph_jitter=2.5, size_jitter=0.14, shear=0.22, bold=0, faded=True,
             sticky_tilt=8.0, board_tilt=6.0, glare=True, smudges=3, noise=18, blur=0.7)
STYLES = {style.name: style for style in (CLEAR, HARD)}


@dataclass(frozen=True)
class Drawn:
    """One piece of text as drawn: its box ``(x0, y0, x1, y1)`` in the final picture, and its pieces.

    ``pieces``: for text written on the grid, each word (each character of a date) as
    drawn, in order.
    """

    text: str
    box: tuple[int, int, int, int]
    pieces: tuple["Drawn", ...] = ()


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError(
            "Drawing the whiteboards needs Pillow built with FreeType (ImageFont.load_default(size=...) returned a "
            "bitmap font); install the pillow wheel from PyPI."
        )
    return font


class Pen:
    """Writes on one image with one style, glyph by glyph, and remembers what it wrote where."""

    def __init__(self, image: Image.Image, style: Style, rng: random.Random) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.style = style
        self.rng = rng
        self.drawn: list[Drawn] = []

    def ink(self, name: str) -> tuple[int, int, int]:
        fresh, faded = INKS[name]
        return faded if self.style.faded else fresh

    def width(self, text: str, size: int) -> float:
        return _font(size).getlength(text)

    def write(self, xy: tuple[float, float], text: str, size: int, colour, *, bold: int | None = None) -> tuple[int, int, int, int]:
        """Write ``text`` with its top left near ``xy``; returns its box."""
        style, rng = self.style, self.rng
        bold = style.bold if bold is None else bold
        if self.image.mode == "RGBA" and len(colour) == 3:
            colour = tuple(colour) + (255,)
        x, y = xy
        shear = rng.uniform(-style.shear, style.shear) if style.shear else 0.0
        drift = 0.0
        left, top, right, bottom = math.inf, math.inf, -math.inf, -math.inf
        # upright glyphs of one size go on a word at a time (much faster); the others one by one
        by_word = not (style.glyph_rotation or shear or style.size_jitter)
        space = self.width(" ", size) if by_word else 0.0
        for piece in text.split(" ") if by_word else text:
            glyph_size = size
            if style.size_jitter:
                glyph_size = max(8, round(size * (1 + rng.uniform(-style.size_jitter, style.size_jitter))))
            font = _font(glyph_size)
            advance = font.getlength(piece)
            if style.glyph_jitter:
                drift = max(-style.glyph_jitter, min(style.glyph_jitter, drift + rng.uniform(-0.8, 0.8)))
            gy = y + drift + (size - glyph_size) * 0.8
            if piece.strip():
                if not by_word:
                    box = self._stamp(piece, font, (x, gy), colour, bold, shear)
                else:
                    self.draw.text((x, gy), piece, font=font, fill=colour, stroke_width=bold, stroke_fill=colour)
                    box = self.draw.textbbox((x, gy), piece, font=font, stroke_width=bold)
                left, top = min(left, box[0]), min(top, box[1])
                right, bottom = max(right, box[2]), max(bottom, box[3])
            x += advance + space + (rng.uniform(-0.6, 1.2) if style.glyph_rotation else 0.0)
        box = (int(left), int(top), int(math.ceil(right)), int(math.ceil(bottom)))
        self.drawn.append(Drawn(text, box))
        return box

    def _stamp(self, char: str, font, xy, colour, bold: int, shear: float) -> tuple[int, int, int, int]:
        """One glyph drawn on its own, rotated and slanted, then inked through as a mask."""
        side = int(font.size * 1.7)
        pad = side // 5
        mask = Image.new("L", (side, side), 0)
        ImageDraw.Draw(mask).text((pad, pad), char, font=font, fill=255, stroke_width=bold, stroke_fill=255)
        angle = math.radians(self.rng.uniform(-self.style.glyph_rotation, self.style.glyph_rotation))
        # output pixel (x, y) reads input pixel A (x, y) + c about the glyph's centre: a turn, then a slant
        cx, cy = pad + font.size / 3, pad + font.size / 2
        cos, sin = math.cos(angle), math.sin(angle)
        a, b, d, e = cos, sin + shear * cos, -sin, cos - shear * sin
        mask = mask.transform(mask.size, Image.Transform.AFFINE,
                              (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy), resample=Image.Resampling.BILINEAR)
        origin = (round(xy[0]) - pad, round(xy[1]) - pad)
        self.image.paste(colour, origin + (origin[0] + side, origin[1] + side), mask)
        inked = mask.getbbox() or (pad, pad, pad, pad)
        return (origin[0] + inked[0], origin[1] + inked[1], origin[0] + inked[2], origin[1] + inked[3])

    def stroke(self, points: Sequence[tuple[float, float]], colour, width: int = 3) -> None:
        """A marker line through ``points``, each segment bent a little like a hand-drawn one."""
        wobbly = [points[0]]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            length = math.hypot(x1 - x0, y1 - y0)
            bend = self.rng.uniform(-1, 1) * min(3.0, length / 40) * (2 if self.style.faded else 1)
            nx, ny = (-(y1 - y0) / length, (x1 - x0) / length) if length else (0.0, 0.0)
            wobbly += [((x0 + x1) / 2 + nx * bend, (y0 + y1) / 2 + ny * bend), (x1, y1)]
        self.draw.line(wobbly, fill=colour, width=width, joint="curve")

    def box(self, box: tuple[float, float, float, float], colour, width: int = 3) -> None:
        x0, y0, x1, y1 = box
        j = lambda: self.rng.uniform(-2, 2)  # noqa: E731 - the corners never meet exactly
        self.stroke([(x0 + j(), y0 + j()), (x1 + j(), y0 + j()), (x1 + j(), y1 + j()), (x0 + j(), y1 + j()), (x0 + 3 + j(), y0 + 2 + j())], colour, width)

    def arrow(self, start: tuple[float, float], end: tuple[float, float], colour, width: int = 3) -> None:
        self.stroke([start, end], colour, width)
        angle = math.atan2(end[1] - start[1], end[0] - start[0])
        for side in (-1, 1):
            spread = angle + math.pi + side * math.radians(28 + self.rng.uniform(-6, 6))
            tip = (end[0] + 12 * math.cos(spread), end[1] + 12 * math.sin(spread))
            self.draw.line([end, tip], fill=colour, width=width)


def cells_of(pen: Pen, text: str, size: int) -> int:
    """How many grid cells ``text`` takes when written on the grid (see ``_write_on_grid``)."""
    return sum(max(1, math.ceil((pen.width(piece, size) + 4) / CELL_WIDTH)) for piece in _pieces(text))


def _pieces(text: str) -> list[str]:
    """What goes in cells of its own: each word, and each character of a word with a digit in it (dates)."""
    return [piece for word in text.split() for piece in (list(word) if any(c.isdigit() for c in word) else [word])]


def _write_on_grid(pen: Pen, cell: tuple[int, int], text: str, size: int, colour, *, bold: int | None = None,
                   wrap_to: int | None = None) -> tuple[tuple[int, int, int, int], int]:
    """Write ``text`` from grid ``cell`` (column, row), each piece starting at a cell's left edge.

    A piece is a word, or one character of a word holding a digit (so each digit of a
    date has its cell). Where a piece would run past the last column, the writing goes
    on in the next row from column ``wrap_to`` (default: the first column). Records one
    ``Drawn`` for the whole text, with a ``Drawn`` for each piece; returns its box and
    the last row written.
    """
    column, row = cell
    wrap_to = column if wrap_to is None else wrap_to
    mark = len(pen.drawn)
    for piece in _pieces(text):
        cells = max(1, math.ceil((pen.width(piece, size) + 4) / CELL_WIDTH))
        if column + cells > GRID and column > wrap_to:
            column, row = wrap_to, row + 1
        top = row * CELL_HEIGHT + (CELL_HEIGHT - 4 - size) // 2 + 1
        pen.write((column * CELL_WIDTH + 2, top), piece, size, colour, bold=bold)
        column += cells
    pieces = tuple(pen.drawn[mark:])
    del pen.drawn[mark:]
    box = (min(p.box[0] for p in pieces), min(p.box[1] for p in pieces), max(p.box[2] for p in pieces), max(p.box[3] for p in pieces))
    pen.drawn.append(Drawn(text, box, pieces))
    return box, row


def render(board, style: Style, seed: str) -> tuple[Image.Image, list[Drawn]]:
    """The whiteboard picture of ``board`` (topic, date, attendees, decisions, actions), and where its text is."""
    rng = random.Random(seed)
    image = Image.new("RGB", (WIDTH, HEIGHT), BOARD)
    _shade(image, rng)
    for _ in range(style.smudges):
        _smudge(image, rng)
    pen = Pen(image, style, rng)
    inks = rng.sample(("black", "blue", "red", "green"), 3)
    title_ink, body_ink, accent_ink = (pen.ink(name) for name in inks)
    if rng.random() < 0.5:  # most boards are written in one dark marker
        body_ink = pen.ink("black" if inks[0] != "black" else "blue")

    # the topic, underlined, on the first row; the date below it on the right, a digit a cell
    title, _ = _write_on_grid(pen, (0, 0), board.title, 20, title_ink)
    pen.stroke([(title[0] - 2, CELL_HEIGHT - 2), (title[2] + 4, CELL_HEIGHT - 2 + rng.uniform(-1, 1))], title_ink, 2)
    _write_on_grid(pen, (GRID - cells_of(pen, board.date, 18), 1), board.date, 18, body_ink)

    # who was there
    present = "Present: " + " ".join(board.attendees)
    _, row = _write_on_grid(pen, (0, 2), present, 18, body_ink, wrap_to=3)

    # the decisions, boxed
    first = row + 1
    label, _ = _write_on_grid(pen, (1, first), "Decided:", 18, accent_ink)
    lines = [label]
    row = first
    for decision in board.decisions:
        box, row = _write_on_grid(pen, (1, row + 1), "* " + decision, 18, body_ink, wrap_to=2)
        lines.append(box)
    right = min(WIDTH - 3, max(box[2] for box in lines) + 10)
    decisions_box = (4, first * CELL_HEIGHT + 1, right, (row + 1) * CELL_HEIGHT - 1)
    pen.box(decisions_box, accent_ink, 2)

    # the action items, one sticky note each (two rows: owner and task, then the due date),
    # below an arrow where there is a spare row
    rows_left = GRID - (row + 1) - 2 * len(board.actions)
    top = row + 1 + (1 if rows_left > 0 else 0)
    arrow_x = decisions_box[2] - 20 - rng.randint(0, 30)
    if rows_left > 0:
        pen.arrow((arrow_x, decisions_box[3] + 1), (arrow_x + rng.randint(-4, 4), top * CELL_HEIGHT - 2), accent_ink, 2)
    colours = rng.sample(STICKIES, len(board.actions))
    for index, (owner, task, due) in enumerate(board.actions):
        _sticky(image, pen, (rng.randint(0, 1), top + 2 * index), colours[index], owner, task, due, body_ink)

    if style.glare:
        _glare(image, rng)
    drawn = pen.drawn
    if style.board_tilt:
        image, drawn = _photograph(image, drawn, style, rng)
    if style.blur:
        image = image.filter(ImageFilter.GaussianBlur(style.blur))
    if style.noise:
        image = _noise(image, style.noise, rng)
    return image, drawn


def _sticky(image: Image.Image, pen: Pen, cell, colour, owner: str, task: str, due: str, ink) -> None:
    """A sticky note two rows high from grid ``cell``: the owner and the task, then the due date."""
    rng, style = pen.rng, pen.style
    width = CELL_WIDTH * min(GRID - cell[0], max(cells_of(pen, owner + " " + task, 18), cells_of(pen, "due " + due, 18)))
    note = Image.new("RGBA", (width + 4, 2 * CELL_HEIGHT + 4), (0, 0, 0, 0))
    draw = ImageDraw.Draw(note)
    draw.rectangle((3, 3, width + 3, 2 * CELL_HEIGHT + 3), fill=(0, 0, 0, 40))  # its shadow
    draw.rectangle((0, 1, width - 2, 2 * CELL_HEIGHT - 1), fill=colour + (255,))
    writer = Pen(note, style, rng)
    _write_on_grid(writer, (0, 0), owner, 18, ink, bold=1)
    _write_on_grid(writer, (cells_of(writer, owner, 18), 0), task, 18, ink)
    _write_on_grid(writer, (0, 1), "due " + due, 18, ink)
    angle = rng.uniform(-style.sticky_tilt, style.sticky_tilt) if style.sticky_tilt else 0.0
    turned = note.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True) if angle else note
    xy = (cell[0] * CELL_WIDTH, cell[1] * CELL_HEIGHT)
    origin = (int(xy[0] - (turned.width - note.width) / 2), int(xy[1] - (turned.height - note.height) / 2))
    image.paste(turned, origin, turned)
    # where its text ended up on the board
    centre = (note.width / 2, note.height / 2)
    shift = lambda b: _turn_box(b, centre, -angle, (turned.width - note.width) / 2, (turned.height - note.height) / 2, origin)  # noqa: E731
    pen.drawn.extend(_moved(drawn, shift) for drawn in writer.drawn)


def _moved(item: "Drawn", move) -> "Drawn":
    """``item`` with its box and its pieces' boxes put through ``move``."""
    return Drawn(item.text, move(item.box), tuple(_moved(piece, move) for piece in item.pieces))


def _turn_box(box, centre, degrees: float, dx: float, dy: float, origin=(0, 0)) -> tuple[int, int, int, int]:
    """The box around ``box`` turned by ``degrees`` (counter-clockwise on screen, as ``Image.rotate``) about ``centre``, moved by ``origin``."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    xs, ys = [], []
    for x, y in ((box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])):
        rx, ry = x - centre[0], y - centre[1]
        xs.append(centre[0] + rx * cos - ry * sin + dx)
        ys.append(centre[1] + rx * sin + ry * cos + dy)
    return (int(min(xs)) + origin[0], int(min(ys)) + origin[1], int(math.ceil(max(xs))) + origin[0], int(math.ceil(max(ys))) + origin[1])


def _shade(image: Image.Image, rng: random.Random) -> None:
    """A board is never evenly white: a soft light-to-dark gradient across it."""
    strength = rng.randint(4, 14)
    ramp = Image.linear_gradient("L").resize(image.size).rotate(rng.choice((0, 90, 180, 270)), expand=False)
    ramp = ramp.point(lambda v: v * strength // 255)
    image.paste(ImageChops.subtract(image, Image.merge("RGB", (ramp, ramp, ramp))))


def _soft_patch(image: Image.Image, colour, centre, radii, strength: int, blur: float) -> None:
    """Blend ``colour`` into ``image`` through a blurred ellipse (drawn and blurred at a quarter size: fast)."""
    quarter = (image.width // 4, image.height // 4)
    mask = Image.new("L", quarter, 0)
    (x, y), (rx, ry) = [v / 4 for v in centre], [v / 4 for v in radii]
    ImageDraw.Draw(mask).ellipse((x - rx, y - ry, x + rx, y + ry), fill=strength)
    mask = mask.filter(ImageFilter.GaussianBlur(blur / 4)).resize(image.size, Image.Resampling.BILINEAR)
    image.paste(colour, (0, 0) + image.size, mask)


def _smudge(image: Image.Image, rng: random.Random) -> None:
    """A faint grey cloud where something was wiped off."""
    centre = (rng.randint(0, WIDTH), rng.randint(0, HEIGHT))
    _soft_patch(image, (150, 150, 160), centre, (rng.randint(30, 90), rng.randint(10, 30)), rng.randint(25, 50), 12)


def _glare(image: Image.Image, rng: random.Random) -> None:
    """The reflection of a ceiling light: a soft white patch that washes the ink out."""
    centre = (rng.randint(WIDTH // 5, 4 * WIDTH // 5), rng.randint(HEIGHT // 5, 4 * HEIGHT // 5))
    _soft_patch(image, (255, 255, 255), centre, (rng.randint(50, 110), rng.randint(25, 60)), rng.randint(110, 160), 22)


def _photograph(image: Image.Image, drawn: list[Drawn], style: Style, rng: random.Random):
    """The board as photographed: shrunk in the frame, off centre, turned, with the wall around it."""
    scale = rng.uniform(0.84, 0.92)
    small = image.resize((round(WIDTH * scale), round(HEIGHT * scale)), Image.Resampling.LANCZOS)
    photo = Image.new("RGB", (WIDTH, HEIGHT), WALL)
    dx = (WIDTH - small.width) // 2 + rng.randint(-8, 8)
    dy = (HEIGHT - small.height) // 2 + rng.randint(-6, 6)
    photo.paste(small, (dx, dy))
    angle = rng.uniform(-style.board_tilt, style.board_tilt)
    photo = photo.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=WALL)
    centre = (WIDTH / 2, HEIGHT / 2)
    def move(box):
        return _turn_box(tuple(round(v * scale) + (dx if i % 2 == 0 else dy) for i, v in enumerate(box)), centre, -angle, 0, 0)

    return photo, [_moved(item, move) for item in drawn]


def _noise(image: Image.Image, amplitude: int, rng: random.Random) -> Image.Image:
    """Sensor noise from the seeded generator (Pillow's own noise is not seeded)."""
    grain = Image.frombytes("L", image.size, rng.randbytes(image.width * image.height))
    grain = grain.point(lambda v: v * 2 * amplitude // 255)
    grain = Image.merge("RGB", (grain, grain, grain))
    return ImageChops.subtract(ImageChops.add(image, grain), Image.new("RGB", image.size, (amplitude,) * 3))
