"""smolvlm-whiteboard: the plugin's default vision-language model, built once on first use.

What it is: an Idefics3 checkpoint (the SmolVLM architecture, native in transformers)
whose language model is the real SmolLM2-135M-Instruct, unchanged, with a small vision
tower and connector that tuneforge fits itself, here, to pictures drawn by the
whiteboard-notes generator. It reads the large, clear writing of those boards (topics,
names, dates, the few phrases they use); it is not a general-purpose vision-language
model and knows nothing of photographs, charts or other kinds of text.

How the vision side is made (the language model stays frozen and is never run): the
tower sees the board squashed to ``IMAGE_SIZE`` pixels square, cut into ``GRID`` x
``GRID`` patches of ``PATCH`` pixels, and the connector turns each patch into one image
token. Each image token is made to become the language model's own input embedding of
the word piece written at that place on the board (a blank for empty board), so the
language model receives the board's writing laid out row by row, as if it were text.
The boards write on that same grid (``render.GRID``), so on a clear board a word piece
looks the same wherever it is, and a linear map of a patch's pixels reads it: the
tower and connector are set in closed form by least squares (``fit_vision``), in a
few minutes on a CPU, with no gradient step. Boards are drawn from their own seeds
(never those of the dataset's splits); every choice is seeded, so a build gives the
same weights on a machine with the same torch, transformers and Pillow.

``resolve()`` returns the checkpoint directory, ``$TUNEFORGE_HOME/models/smolvlm-whiteboard-v<VERSION>``,
building it first if need be (SmolLM2 is converted first when it is not there yet).
Like the SmolLM2 conversion, the build goes through ``tuneforge.api.build_once``: a
temporary sibling directory under a lock, renamed into place only when finished.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Sequence

from tuneforge.api import ModelSource, QuickstartTask, build_once, resolve_model, tuneforge_home

from .smolvlm import JINJA as CHAT_TEMPLATE  # SmolVLM's own chat template, as its checkpoints carry it

NAME = "smolvlm-whiteboard"
# Bump when the recipe or the architecture changes, so caches are rebuilt.
VERSION = 2
MARKER = ".complete"

IMAGE_SIZE = 448  # the board (448 x 336) is squashed to this square by the processor
PATCH = 32  # pixels on a patch edge: about three letters of the boards' body text
GRID = IMAGE_SIZE // PATCH  # 14 x 14 patches, one image token each (scale factor 1)
IMAGE_SEQ_LEN = GRID * GRID
VISION = dict(hidden_size=768, intermediate_size=768, num_hidden_layers=1, num_attention_heads=4)
IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
BLANK = " "  # what an image token over empty board stands for

# The fit (closed form, see ``fit_vision``): BOARDS boards drawn from the model's own seeds.
SEED = 0
BOARDS = 150
HARD_FRACTION = 0.0  # share of the fitted boards drawn in the hard style
HELD_OUT = 20  # boards (half of them hard) on which the build measures its reading
RIDGE = 10.0  # the ridge penalty of the patch classifier
ANCHOR = 100.0  # the constant units that make the post-layernorm a plain rescaling



def model_dir() -> Path:
    """Where the built checkpoint lives: ``$TUNEFORGE_HOME/models/smolvlm-whiteboard-v<VERSION>``."""
    return tuneforge_home() / "models" / f"{NAME}-v{VERSION}"


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER).is_file()


def resolve() -> str:
    """The local checkpoint directory, built on first use (a few minutes on a CPU)."""
    target = model_dir()
    if is_complete(target):
        return str(target)
    language_model = resolve_model("smollm2-135m-instruct").base_path
    return str(build_once(target, lambda staged: build(language_model, staged), complete=is_complete, name=NAME))


# -- what each image token stands for -----------------------------------------------


def _piece_tokens(tokenizer, text: str) -> list[int]:
    """The word pieces of one piece of writing as the notes would have it (a word after a space; a digit alone)."""
    if len(text) == 1 and not text.isalpha():
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    return [token for token in ids if tokenizer.decode([token]).strip()] or ids


def cell_targets(drawn: Sequence, tokenizer, blank_id: int, width: int, height: int) -> list[int]:
    """For each of the ``GRID`` x ``GRID`` patches (row by row), the token written there, else ``blank_id``.

    The boards write on the patch grid (``render.GRID``): each word starts at a cell's
    left edge and each digit of a date has its own cell. A word's first word piece goes
    to the patch where its ink starts, the next ones to the patches to its right (the
    next free one, where a patch is taken), so the tokens of a line keep their order.
    """
    cells = [blank_id] * IMAGE_SEQ_LEN
    for item in drawn:
        for piece in item.pieces or (item,):
            x0, y0, x1, y1 = piece.box
            row = min(GRID - 1, max(0, int((y0 + y1) / 2 * GRID / height)))
            column = min(GRID - 1, max(0, int(x0 * GRID / width)))
            for token in _piece_tokens(tokenizer, piece.text):
                while column < GRID and cells[row * GRID + column] != blank_id:
                    column += 1
                if column < GRID:
                    cells[row * GRID + column] = token
    return cells


def _boards(count: int, purpose: str, hard_fraction: float):
    """``count`` (picture, where its text is) pairs drawn from this model's own seeds (never a split's)."""
    from .datasets.whiteboard_notes.generate import make_board
    from .datasets.whiteboard_notes.render import STYLES, render

    rng = random.Random(f"{NAME}/{SEED}/{purpose}")
    for index in range(count):
        seed = f"{NAME}/{SEED}/{purpose}/{index}"
        style = STYLES["hard" if rng.random() < hard_fraction else "clear"]
        yield (*render(make_board(seed), style, f"{seed}/picture"), style.name)


# -- the build -------------------------------------------------------------------------


def build_model(language_model: str, *, vision: dict | None = None):
    """The untrained Idefics3 (SmolLM2's weights in its text model) and its processor."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(language_model, trust_remote_code=False)
    tokenizer.add_special_tokens({"additional_special_tokens": list(IMAGE_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    size = {"longest_edge": IMAGE_SIZE}
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size=size, max_image_size=size)
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)

    text = AutoModelForCausalLM.from_pretrained(language_model, dtype=torch.float32, trust_remote_code=False)
    text_config = text.config.to_dict()
    text_config["vocab_size"] = len(tokenizer)
    config = Idefics3Config(
        vision_config=dict(**(vision or VISION), image_size=IMAGE_SIZE, patch_size=PATCH),
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=1,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_utterance>"),
    )
    torch.manual_seed(SEED)
    model = Idefics3ForConditionalGeneration(config)
    model.config.architectures = ["Idefics3ForConditionalGeneration"]
    text.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = text.get_input_embeddings().weight.data
    # A turn ends with <end_of_utterance> here where SmolLM2 ends it with <|im_end|>: same embedding.
    embeddings[tokenizer.convert_tokens_to_ids("<end_of_utterance>")] = embeddings[tokenizer.convert_tokens_to_ids("<|im_end|>")]
    missing = model.model.text_model.load_state_dict(text.model.state_dict(), strict=True)
    del missing
    model.lm_head.weight = model.model.text_model.get_input_embeddings().weight
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model, processor


def _patches(processor, pictures) -> "torch.Tensor":
    """The pictures as the tower sees them, one row of ``3 * PATCH * PATCH`` values per patch (row by row)."""
    pixels = processor.image_processor(images=[[p] for p in pictures], return_tensors="pt")["pixel_values"][:, 0]
    grid = pixels.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # (n, 3, GRID, GRID, PATCH, PATCH)
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * PATCH * PATCH)


def _read(model, processor, boards, blank_id: int, classes) -> dict:
    """Share of the written patches (and of the empty ones) whose image token is nearest the right word piece."""
    import torch

    from .datasets.whiteboard_notes.render import HEIGHT, WIDTH

    embeddings = model.model.text_model.get_input_embeddings().weight.detach()[classes]
    right = {}
    for picture, drawn, style in boards:
        target = torch.tensor(cell_targets(drawn, processor.tokenizer, blank_id, WIDTH, HEIGHT))
        pixels = processor.image_processor(images=[[picture]], return_tensors="pt")["pixel_values"][:, 0]
        with torch.no_grad():
            out = model.model.connector(model.model.vision_model(pixel_values=pixels).last_hidden_state)[0]
        read = classes[(out @ embeddings.T).argmax(-1)] == target
        written = target != blank_id
        for key, mask in ((style, written), (f"{style} empty", ~written)):
            hits, total = right.get(key, (0, 0))
            right[key] = (hits + int(read[mask].sum()), total + int(mask.sum()))
    return {key: round(hits / max(1, total), 3) for key, (hits, total) in sorted(right.items())}


def fit_vision(model, processor, *, boards: int = BOARDS, say=None) -> dict:
    """Set the vision tower and connector in closed form so each image token is the word piece under its patch.

    Three least-squares fits, no gradient steps:

    1. the patch embedding (a linear map of a patch's pixels, like a convolution with
       stride = kernel) becomes a ridge-regression classifier of the patch: one hidden
       unit per word piece seen in the drawn boards, scoring how much the patch looks
       like that piece; two more units hold the constants +``ANCHOR`` and -``ANCHOR``;
    2. the encoder layers are made to pass their input through (attention and MLP
       outputs zeroed: the residual stream carries the scores unchanged), and the
       post-layernorm, whose variance the constant units dominate, only rescales them;
    3. the connector is fitted from those normalized scores to the language model's
       input embeddings of the word pieces (blank board: the embedding of ``BLANK``).

    The boards write on the patch grid, so a word piece looks the same wherever it is
    on a clear board, and a linear map of the pixels reads it. Returns what is recorded
    in ``tuneforge_build.json``: the word pieces known, and the share of the held-out
    boards' patches read right.
    """
    import torch

    from .datasets.whiteboard_notes.render import HEIGHT, WIDTH

    say = say or _say
    started = time.monotonic()
    tokenizer = processor.tokenizer
    blank_id = tokenizer(BLANK, add_special_tokens=False)["input_ids"][0]
    vision, connector = model.model.vision_model, model.model.connector
    hidden = vision.config.hidden_size
    embeddings = model.model.text_model.get_input_embeddings().weight.detach()

    drawn_boards = list(_boards(boards, "fit", HARD_FRACTION))
    pixels = _patches(processor, [picture for picture, _, _ in drawn_boards])
    targets = torch.tensor([t for _, drawn, _ in drawn_boards for t in cell_targets(drawn, tokenizer, blank_id, WIDTH, HEIGHT)])
    say(f"  drew {boards} boards ({len(pixels)} patches) in {time.monotonic() - started:.0f} s")
    # the word pieces to tell apart: the most frequent ones, as many as the hidden units allow
    classes, counts = torch.unique(targets, return_counts=True)
    classes = classes[counts.argsort(descending=True)[: hidden - 2]].sort().values
    known = torch.isin(targets, classes)
    pixels, targets = pixels[known], targets[known]
    index = torch.searchsorted(classes, targets)

    # 1. the patch embedding: ridge regression from pixels (and a constant) to one-hot word pieces
    design = torch.cat([pixels, torch.ones(len(pixels), 1)], 1).double()
    gram = design.T @ design + RIDGE * torch.eye(design.shape[1], dtype=torch.float64)
    onehot = torch.zeros(len(index), len(classes), dtype=torch.float64).index_put_((torch.arange(len(index)), index), torch.tensor(1.0, dtype=torch.float64))
    scores_of = torch.linalg.solve(gram, design.T @ onehot).float()  # (3 * PATCH * PATCH + 1, classes)
    with torch.no_grad():
        embed = vision.embeddings
        weight = torch.zeros(hidden, 3 * PATCH * PATCH)
        weight[: len(classes)] = scores_of[:-1].T
        bias = torch.zeros(hidden)
        bias[: len(classes)] = scores_of[-1]
        bias[hidden - 2], bias[hidden - 1] = ANCHOR, -ANCHOR
        embed.patch_embedding.weight.copy_(weight.view(hidden, 3, PATCH, PATCH))
        embed.patch_embedding.bias.copy_(bias)
        embed.position_embedding.weight.zero_()
        # 2. layers that pass the residual stream through; a post-layernorm that only rescales
        for layer in vision.encoder.layers:
            for module in (layer.self_attn.out_proj, layer.mlp.fc2):
                module.weight.zero_()
                module.bias.zero_()
        vision.post_layernorm.weight.fill_(1.0)
        vision.post_layernorm.bias.zero_()
        # 3. the connector: least squares from the normalized scores to the word pieces' embeddings
        features = torch.cat([vision(pixel_values=chunk).last_hidden_state.flatten(0, 1) for chunk in
                              processor.image_processor(images=[[p] for p, _, _ in drawn_boards], return_tensors="pt")["pixel_values"][:, 0].split(32)])
        features = features[known]
        gram = features.double().T @ features.double() + 1e-3 * torch.eye(hidden, dtype=torch.float64)
        projection = torch.linalg.solve(gram, features.double().T @ embeddings[targets].double()).float()
        connector.modality_projection.proj.weight.copy_(projection.T)
    read = _read(model, processor, _boards(HELD_OUT, "held-out", 0.5), blank_id, classes)
    say(f"  fitted in {time.monotonic() - started:.0f} s; held-out patches read right: "
        + ", ".join(f"{key} {value:.0%}" for key, value in read.items()))
    return {"word_pieces": len(classes), "boards": boards, "held_out_read": read}


def build(language_model: str, staged: str | os.PathLike, *, boards: int = BOARDS) -> Path:
    """Build the checkpoint, written at ``staged`` (a new directory; ``resolve`` renames it into place)."""
    import torch

    staged = Path(staged)
    started = time.monotonic()
    _say(f"Building {NAME}: SmolLM2-135M-Instruct with a small vision tower fitted to drawn whiteboards "
         f"(once; about a minute on a CPU) ...")
    threads = torch.get_num_threads()
    model, processor = build_model(language_model)
    fitted = fit_vision(model, processor, boards=boards)
    model.save_pretrained(staged)
    processor.save_pretrained(staged)
    record = {
        "name": NAME, "version": VERSION, "language_model": "SmolLM2-135M-Instruct (unchanged)",
        "vision": {**VISION, "image_size": IMAGE_SIZE, "patch_size": PATCH}, "seed": SEED, "ridge": RIDGE,
        **fitted, "seconds": round(time.monotonic() - started), "threads": threads,
    }
    (staged / "tuneforge_build.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (staged / MARKER).write_text(json.dumps({"name": NAME}) + "\n", encoding="utf-8")
    return staged


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def models():
    yield ModelSource(
        name=NAME,
        description="SmolLM2-135M-Instruct with a small vision tower fitted here to drawn whiteboards "
        "(built once on first use; reads whiteboard-notes boards, not a general-purpose VLM)",
        resolve=resolve,
    )


# The whiteboard quickstart: LoRA on the language model (the family's targets), the vision side as built.
WHITEBOARD_RECIPE = dict(
    train_type="lora",
    lora_rank=16,
    lora_alpha=32,
    lora_dropout=0.0,
    learning_rate=1e-3,
    lr_scheduler="cosine",
    warmup_ratio=0.05,
    per_device_batch_size=1,
    gradient_accumulation_steps=1,
    max_length=1024,
    truncation="drop",
    packing=False,
    logging_steps=5,
    save_steps=10,
    save_total_limit=2,
)


def quickstart_tasks():
    yield QuickstartTask(
        name="whiteboard",
        description=f"Fine-tune {NAME} to write meeting notes from whiteboard pictures (test and hard splits)",
        model=NAME,
        dataset="whiteboard-notes",
        recipe=WHITEBOARD_RECIPE,
        eval_splits=("test", "hard"),
        max_steps=40,
        eval_limit=8,
        max_new_tokens=160,  # the longest reference notes are 121 tokens
    )
