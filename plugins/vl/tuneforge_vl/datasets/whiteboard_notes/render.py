"""Draw a whiteboard: a meeting's topic, date, attendees, decisions and action items.

``render(board, style, seed)`` returns the picture (RGB, ``WIDTH`` x ``HEIGHT``) and
where each piece of text went. Everything random comes from ``random.Random(seed)``
and the only font is the one inside Pillow (``ImageFont.load_default(size)``, Aileron,
laid out without Raqm), so a seed gives the same pixels on every machine with the same
Pillow.

The layout: the topic large and underlined at the top left, the date at the top
right, a "Present:" line, the decisions in a hand-drawn box, an arrow down to one
sticky note per action item (owner, task, due date). A ``Style`` says how messy the
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
              sticky_tilt=3.0, board_tilt=0.0, glare=False, smudges=0, noise=0, blur=0.0)
HARD = Style("hard", glyph_rotation=9.0, glyph_jitter=2.5, size_jitter=0.14, shear=0.22, bold=0, faded=True,
             sticky_tilt=8.0, board_tilt=6.0, glare=True, smudges=3, noise=18, blur=0.7)
STYLES = {style.name: style for style in (CLEAR, HARD)}


@dataclass(frozen=True)
class Drawn:
    """One piece of text as drawn: its box ``(x0, y0, x1, y1)`` in the final picture."""

    text: str
    box: tuple[int, int, int, int]


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


def fit(pen: Pen, text: str, size: int, room: float, smallest: int = 14) -> int:
    """The largest font size up to ``size`` at which ``text`` fits in ``room`` px."""
    while size > smallest and pen.width(text, size) > room:
        size -= 1
    return size


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
    margin = 14 + rng.randint(0, 6)

    # the topic, underlined, and the date on the right
    date_size = 18
    date_width = pen.width(board.date, date_size)
    title_size = fit(pen, board.title, 26, WIDTH - 2 * margin - date_width - 24)
    top = 10 + rng.randint(0, 4)
    title = pen.write((margin, top), board.title, title_size, title_ink)
    pen.stroke([(title[0] - 2, title[3] + 5), (title[2] + 4, title[3] + 4 + rng.uniform(-2, 2))], title_ink, 3)
    pen.write((WIDTH - margin - date_width - rng.randint(0, 6), top + 4), board.date, date_size, body_ink)

    # who was there
    present = "Present: " + ", ".join(board.attendees)
    y = title[3] + 14
    present_box = pen.write((margin, y), present, fit(pen, present, 20, WIDTH - 2 * margin), body_ink)

    # the decisions, boxed
    y = present_box[3] + 12
    label = pen.write((margin + 10, y + 6), "Decided:", 18, accent_ink)
    lines = []
    line_y = label[3] + 6
    for decision in board.decisions:
        text = "* " + decision
        lines.append(pen.write((margin + 16, line_y), text, fit(pen, text, 20, WIDTH - 2 * margin - 40), body_ink))
        line_y = lines[-1][3] + 7
    right = max(box[2] for box in [label, *lines]) + 14
    decisions_box = (margin, y, right, line_y + 2)
    pen.box(decisions_box, accent_ink)

    # an arrow down to the action items, one sticky note each
    stickies_top = decisions_box[3] + 26
    count = len(board.actions)
    gap = 10
    sticky_width = min(140, (WIDTH - 2 * margin - gap * (count - 1)) // count)
    sticky_height = min(HEIGHT - stickies_top - 8, 104)
    arrow_x = decisions_box[0] + 30 + rng.randint(0, 40)
    pen.arrow((arrow_x, decisions_box[3] + 2), (arrow_x + rng.randint(-6, 10), stickies_top - 3), accent_ink)
    colours = rng.sample(STICKIES, count)
    left = margin + rng.randint(0, max(0, WIDTH - 2 * margin - count * sticky_width - (count - 1) * gap))
    for index, (owner, task, due) in enumerate(board.actions):
        x = left + index * (sticky_width + gap)
        _sticky(image, pen, (x, stickies_top + rng.randint(0, 6)), (sticky_width, sticky_height), colours[index], owner, task, due, body_ink)

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


def _sticky(image: Image.Image, pen: Pen, xy, size, colour, owner: str, task: str, due: str, ink) -> None:
    """A sticky note with the owner, the task (up to two lines) and the due date, stuck on slightly askew."""
    rng, style = pen.rng, pen.style
    width, height = size
    note = Image.new("RGBA", (width + 8, height + 8), (0, 0, 0, 0))
    draw = ImageDraw.Draw(note)
    draw.rectangle((5, 5, width + 5, height + 5), fill=(0, 0, 0, 40))  # its shadow
    draw.rectangle((0, 0, width, height), fill=colour + (255,))
    writer = Pen(note, style, rng)
    room = width - 12
    y = 6
    owner_box = writer.write((7, y), owner, fit(writer, owner, 21, room), ink, bold=1)
    y = owner_box[3] + 7
    lines = _wrap(writer, task, 17, room)
    for line in lines:
        y = writer.write((7, y), line, fit(writer, line, 17, room), ink)[3] + 5
    text = "due " + due
    writer.write((7, max(y + 2, height - 24)), text, fit(writer, text, 16, room), ink)
    angle = rng.uniform(-style.sticky_tilt, style.sticky_tilt)
    turned = note.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    origin = (int(xy[0] - (turned.width - note.width) / 2), int(xy[1] - (turned.height - note.height) / 2))
    image.paste(turned, origin, turned)
    # where its text ended up on the board
    centre = (note.width / 2, note.height / 2)
    for drawn in writer.drawn:
        box = _turn_box(drawn.box, centre, -angle, (turned.width - note.width) / 2, (turned.height - note.height) / 2)
        pen.drawn.append(Drawn(drawn.text, (box[0] + origin[0], box[1] + origin[1], box[2] + origin[0], box[3] + origin[1])))


def _wrap(pen: Pen, text: str, size: int, room: float) -> list[str]:
    """``text`` in at most two lines that fit ``room`` at ``size`` (the last line is shrunk to fit if need be)."""
    words = text.split()
    if pen.width(text, size) <= room or len(words) == 1:
        return [text]
    best = None
    for cut in range(1, len(words)):
        first, second = " ".join(words[:cut]), " ".join(words[cut:])
        widest = max(pen.width(first, size), pen.width(second, size))
        if best is None or widest < best[0]:
            best = (widest, [first, second])
    return best[1]


def _turn_box(box, centre, degrees: float, dx: float, dy: float) -> tuple[int, int, int, int]:
    """The box around ``box`` turned by ``degrees`` (counter-clockwise on screen, as ``Image.rotate``) about ``centre``."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    xs, ys = [], []
    for x, y in ((box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])):
        rx, ry = x - centre[0], y - centre[1]
        xs.append(centre[0] + rx * cos - ry * sin + dx)
        ys.append(centre[1] + rx * sin + ry * cos + dy)
    return (int(min(xs)), int(min(ys)), int(math.ceil(max(xs))), int(math.ceil(max(ys))))


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
    moved = []
    for item in drawn:
        box = tuple(round(v * scale) + (dx if i % 2 == 0 else dy) for i, v in enumerate(item.box))
        moved.append(Drawn(item.text, _turn_box(box, centre, -angle, 0, 0)))
    return photo, moved


def _noise(image: Image.Image, amplitude: int, rng: random.Random) -> Image.Image:
    """Sensor noise from the seeded generator (Pillow's own noise is not seeded)."""
    grain = Image.frombytes("L", image.size, rng.randbytes(image.width * image.height))
    grain = grain.point(lambda v: v * 2 * amplitude // 255)
    grain = Image.merge("RGB", (grain, grain, grain))
    return ImageChops.subtract(ImageChops.add(image, grain), Image.new("RGB", image.size, (amplitude,) * 3))
