"""smolvlm-whiteboard: the plugin's default vision-language model, built once on first use.

What it is: an Idefics3 checkpoint (the SmolVLM architecture, native in transformers)
whose language model is the real SmolLM2-135M-Instruct, unchanged, with a small vision
tower and connector that tuneforge trains itself, here, on pictures drawn by the
whiteboard-notes generator. It reads the large, clear writing of those boards (topics,
names, dates, the few phrases they use); it is not a general-purpose vision-language
model and knows nothing of photographs, charts or other kinds of text.

How the vision side is trained (the language model stays frozen and is never run):
the tower sees the board squashed to ``IMAGE_SIZE`` pixels square, cut into ``GRID`` x
``GRID`` patches of ``PATCH`` pixels, and the connector turns each patch into one image
token. Each image token is taught to become the language model's own input embedding
of the word piece written at that place on the board (a blank for empty board), so the
language model receives the board's writing laid out row by row, as if it were text.
That objective needs no pass through the language model, which is what makes it fit in
minutes on a CPU. Boards are drawn from their own seeds (never those of the dataset's
splits), in both the clear and the hard style; every random choice is seeded, so a
build gives the same weights on a machine with the same torch, transformers and Pillow.

``resolve()`` returns the checkpoint directory, ``$TUNEFORGE_HOME/models/smolvlm-whiteboard-v<VERSION>``,
building it first if need be (SmolLM2 is converted first when it is not there yet).
Like the SmolLM2 conversion, the build goes through ``tuneforge.api.build_once``: a
temporary sibling directory under a lock, renamed into place only when finished.
"""

from __future__ import annotations

import json
import math
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
VERSION = 1
MARKER = ".complete"

IMAGE_SIZE = 448  # the board (448 x 336) is squashed to this square by the processor
PATCH = 32  # pixels on a patch edge: about three letters of the boards' body text
GRID = IMAGE_SIZE // PATCH  # 14 x 14 patches, one image token each (scale factor 1)
IMAGE_SEQ_LEN = GRID * GRID
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
BLANK = " "  # what an image token over empty board stands for

# The training recipe: STEPS x BATCH boards drawn afresh; bounded by time on two CPU cores
# (about 4 s a step there), not by what the tower could still learn.
SEED = 0
STEPS = 48
BATCH = 8
LEARNING_RATE = 3e-3
HARD_FRACTION = 0.25  # share of boards drawn in the hard style



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


def _token_spans(tokenizer, text: str) -> list[tuple[int, float]]:
    """The tokens of ``text`` and where each one's middle falls, as a fraction of the text's length."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(token, (start + end) / 2 / max(1, len(text))) for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"])]


def cell_targets(drawn: Sequence, tokenizer, blank_id: int, width: int, height: int) -> list[int]:
    """For each of the ``GRID`` x ``GRID`` patches (row by row), the token written there, else ``blank_id``.

    A token goes to the patch under its middle (its place along the line of writing,
    by its share of the characters); where that patch is taken, to the next free one
    to the right, so the tokens of a line keep their order.
    """
    cells = [blank_id] * IMAGE_SEQ_LEN
    for item in drawn:
        x0, y0, x1, y1 = item.box
        row = min(GRID - 1, max(0, int((y0 + y1) / 2 * GRID / height)))
        for token, middle in _token_spans(tokenizer, item.text):
            column = min(GRID - 1, max(0, int((x0 + (x1 - x0) * middle) * GRID / width)))
            while column < GRID and cells[row * GRID + column] != blank_id:
                column += 1
            if column < GRID:
                cells[row * GRID + column] = token
    return cells


def _boards(rng: random.Random):
    """Endless (picture, where its text is) pairs drawn from this model's own seeds."""
    from .datasets.whiteboard_notes.generate import make_board
    from .datasets.whiteboard_notes.render import STYLES

    index = 0
    while True:
        seed = f"{NAME}/{SEED}/{index}"
        style = STYLES["hard" if rng.random() < HARD_FRACTION else "clear"]
        yield make_board(seed), style, seed
        index += 1


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


def train_vision(model, processor, *, steps: int = STEPS, batch: int = BATCH, learning_rate: float = LEARNING_RATE,
                 device: str = "cpu", log_every: int = 25, say=None) -> list[float]:
    """Train the vision tower and connector (the language model frozen) to emit the embeddings of the board's writing."""
    import torch
    import torch.nn.functional as F

    from .datasets.whiteboard_notes.render import HEIGHT, WIDTH, render

    say = say or _say
    tokenizer = processor.tokenizer
    blank_id = tokenizer(BLANK, add_special_tokens=False)["input_ids"][0]
    torch.manual_seed(SEED)
    rng = random.Random(f"{NAME}/{SEED}")
    embeddings = model.model.text_model.get_input_embeddings().weight.detach().to(device)
    scale = embeddings.pow(2).sum(-1).mean()
    vision, connector = model.model.vision_model.to(device), model.model.connector.to(device)
    vision.train(), connector.train()
    parameters = [*vision.parameters(), *connector.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))
    )
    boards = _boards(rng)
    losses: list[float] = []
    started = time.monotonic()
    for step in range(steps):
        pictures, targets = [], []
        for _ in range(batch):
            board, style, seed = next(boards)
            picture, drawn = render(board, style, f"{seed}/picture")
            pictures.append([picture])
            targets.append(cell_targets(drawn, tokenizer, blank_id, WIDTH, HEIGHT))
        pixels = processor.image_processor(images=pictures, return_tensors="pt")["pixel_values"][:, 0].to(device)
        target = torch.tensor(targets, device=device)
        features = vision(pixel_values=pixels).last_hidden_state
        out = connector(features)  # (batch, IMAGE_SEQ_LEN, hidden)
        wanted = embeddings[target]
        # candidates: the tokens of this batch (a sampled softmax over what boards say)
        candidates, index = torch.unique(target, return_inverse=True)
        logits = out @ embeddings[candidates].T
        loss = F.cross_entropy(logits.flatten(0, 1), index.flatten()) + (out - wanted).pow(2).sum(-1).mean() / scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            with torch.no_grad():
                read = (logits.argmax(-1) == index)[target != blank_id].float().mean().item()
            say(f"  step {step + 1}/{steps}: loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.3f}, "
                f"written patches read right {read:.0%} ({time.monotonic() - started:.0f} s)")
    vision.eval(), connector.eval()
    model.to("cpu")
    return losses


def build(language_model: str, staged: str | os.PathLike, *, steps: int = STEPS) -> Path:
    """Build the checkpoint, written at ``staged`` (a new directory; ``resolve`` renames it into place)."""
    import torch

    staged = Path(staged)
    started = time.monotonic()
    _say(f"Building {NAME}: SmolLM2-135M-Instruct with a small vision tower trained on drawn whiteboards "
         f"(once; a few minutes on a CPU) ...")
    threads = torch.get_num_threads()
    model, processor = build_model(language_model)
    losses = train_vision(model, processor, steps=steps)
    model.save_pretrained(staged)
    processor.save_pretrained(staged)
    record = {
        "name": NAME, "version": VERSION, "language_model": "SmolLM2-135M-Instruct (unchanged)",
        "vision": {**VISION, "image_size": IMAGE_SIZE, "patch_size": PATCH}, "seed": SEED, "steps": steps,
        "batch": BATCH, "learning_rate": LEARNING_RATE, "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "seconds": round(time.monotonic() - started), "threads": threads,
    }
    (staged / "tuneforge_build.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (staged / MARKER).write_text(json.dumps({"name": NAME}) + "\n", encoding="utf-8")
    return staged


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def models():
    yield ModelSource(
        name=NAME,
        description="SmolLM2-135M-Instruct with a small vision tower trained here on drawn whiteboards "
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
