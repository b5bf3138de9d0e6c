"""Vision-language training speed and memory: ``tuneforge bench-vl``.

Builds a random-weight Qwen2.5-VL model of a named shape directly on the device (weights
do not change speed; no checkpoint is written or downloaded), makes synthetic samples
with real images and trains LoRA on it for a few steps through the very path ``tuneforge
sft`` takes (``sft_benchmark_run``: the same options resolved on the device, tuner and
part freezing, collator, trainer, loss), then reports real tokens a second (text and
image tokens of the language model), images a second, peak memory and the settings.

What a sample is:

- ``--images-per-sample`` synthetic images of ``--megapixels`` each (4:3, seeded shapes
  and lines on a gradient, written as JPEG files), as ``image_url`` parts of the user
  message; encoded by the family's own template and processor (loaded from a folder
  holding only the configuration, the tokenizer and the processor settings, as a
  checkpoint's are), with ``--max-pixels`` (default: Qwen2.5-VL's own 12,845,056) high
  enough that the images keep their size. So the image tokens are real: one per 28 x 28
  pixels (14-pixel patches, 2 x 2 merged), about 1,300 per megapixel.
- Text of random words of the tokenizer's vocabulary (seeded): ``--text-tokens`` on
  average per sample (each sample drawn uniformly within 50% of it), 30% in the user
  message (not learned), the rest the assistant's answer; the template adds its system
  prompt and turn markers.
- The tokenizer is Qwen-VL's test tokenizer (SmolLM2's vocabulary with Qwen's vision and
  chat tokens, ``tuneforge_vl.testing.qwen_vl``): built from ``--tokenizer DIR`` (any
  folder of tokenizer files, SmolLM2's), else from the local SmolLM2 checkpoint. The
  model keeps its shape's vocabulary (152,064 for the 7B shape), so the embedding and
  output layer cost what they cost.

``--sweep`` runs every image size of ``--megapixels`` packed and unpacked, with the
vision tower frozen and trained, one after the other in one process (one table, one
JSON, written again after each run, so a run cut short keeps the figures so far). A run
that fails (out of memory) is reported as such and the next one runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from tuneforge.api import Command, TuneforgeError, option

# Qwen2.5-VL-7B-Instruct, from its config.json on the hub (text) and the vision tower that
# checkpoint holds (its config.json gives hidden_size 1280, patch 14, tokens_per_second 2;
# the rest are Qwen2_5_VLVisionConfig's defaults it relies on: 32 blocks, MLP 3420, 16 heads,
# window 112, full attention in blocks 7/15/23/31, output 3584 into the language model).
QWEN25_VL_7B = {
    "text": dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
        use_sliding_window=False, sliding_window=32768, max_window_layers=28,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    ),
    "vision": dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=3584,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
    ),
}
# A shape for tests: seconds on a CPU (vocab_size None: the tokenizer's).
TINY = {
    "text": dict(
        vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    ),
    "vision": dict(
        depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0],
    ),
}
SHAPES = {"qwen2.5-vl-7b": QWEN25_VL_7B, "tiny": TINY}
ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
QWEN_MAX_PIXELS, QWEN_MIN_PIXELS = 12845056, 3136  # Qwen2.5-VL's preprocessor_config.json
PROMPT_SHARE = 0.3
ASPECT = 4 / 3


@dataclass
class BenchVLOptions:
    shape: str = option("tiny", "Model shape (random weights): " + ", ".join(SHAPES) + ".", choices=list(SHAPES), group="bench")
    tokenizer: Optional[str] = option(None, "A folder of tokenizer files (SmolLM2's) the Qwen-VL test tokenizer is built from; default: the local SmolLM2 checkpoint (converted once).", group="bench")
    megapixels: list[float] = option([1.0], "Size of each image in millions of pixels (4:3); repeat the flag for one run per size.", group="bench")
    images_per_sample: int = option(1, "Images in each sample.", group="bench")
    text_tokens: int = option(512, "Text tokens a sample on average (drawn within 50% of it; 30% prompt, the rest the answer).", group="bench")
    samples_per_step: int = option(4, "Samples in each optimizer step (one batch: packed into one row, or padded rows).", group="bench")
    steps: int = option(4, "Timed optimizer steps.", group="bench")
    warmup_steps: int = option(2, "Untimed steps before them.", group="bench")
    sweep: bool = option(False, "Run every --megapixels size packed and unpacked, with the vision tower frozen and trained (4 runs a size).", group="bench")
    packing: Optional[bool] = option(None, "Pack each step's samples into one row (--no-packing: padded rows); default: as sft decides for a vision-language model.", group="bench")
    freeze_vision_tower: Optional[bool] = option(None, "Keep the vision tower as it is (--no-freeze-vision-tower trains it whole beside the LoRA adapters); default: frozen.", group="tuner")
    freeze_aligner: Optional[bool] = option(None, "Keep the aligner (merger) as it is (--no-freeze-aligner trains it whole); default: frozen.", group="tuner")
    lora_rank: int = option(16, "LoRA rank r (LoRA on the language model's linear layers).", group="tuner")
    lora_alpha: int = option(32, "LoRA alpha.", group="tuner")
    lora_dropout: float = option(0.0, "LoRA dropout.", group="tuner")
    gradient_checkpointing: Optional[bool] = option(None, "Recompute activations in the backward pass; default: sft's on the device (on for CUDA).", group="bench")
    attn_implementation: Optional[str] = option(None, "Attention kernel (sdpa, eager, flash_attention_2, ...); default: sft's on the device.", group="bench")
    max_pixels: int = option(QWEN_MAX_PIXELS, "The processor's largest image area (Qwen2.5-VL's default); an image larger than this is refused, not scaled.", group="images")
    min_pixels: int = option(QWEN_MIN_PIXELS, "The processor's smallest image area (Qwen2.5-VL's default).", group="images")
    device: Optional[str] = option(None, "Device (cpu, cuda, ...); default: the best available.", group="bench")
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = option("auto", "Weights' dtype; auto: bf16 where the device supports it, else float32.", group="bench")
    learning_rate: float = option(1e-4, "Learning rate.", group="bench")
    output: str = option("bench-vl.json", "Where the JSON report goes.", group="bench")
    seed: int = option(0, "Seed of the weights, the images and the text.", group="bench")


def log(message: str) -> None:
    print(f"[bench-vl] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- checks


def image_size(megapixels: float) -> tuple[int, int]:
    """(width, height) of a 4:3 image of about ``megapixels`` million pixels."""
    width = max(1, round(math.sqrt(megapixels * 1e6 * ASPECT)))
    return width, max(1, round(width / ASPECT))


def check(bench: BenchVLOptions) -> None:
    """Every mistake in the options, in one sentence, before any model is built."""
    if bench.shape not in SHAPES:
        raise TuneforgeError(f"--shape '{bench.shape}' is unknown; choose one of {', '.join(SHAPES)}.")
    for key in ("images_per_sample", "samples_per_step", "steps", "lora_rank", "text_tokens"):
        if getattr(bench, key) < 1:
            raise TuneforgeError(f"--{key.replace('_', '-')} is {getattr(bench, key)}; it must be at least 1.")
    if bench.warmup_steps < 0:
        raise TuneforgeError(f"--warmup-steps is {bench.warmup_steps}; it must be 0 or more.")
    if bench.learning_rate <= 0:
        raise TuneforgeError(f"--learning-rate is {bench.learning_rate}; it must be above 0.")
    if not bench.megapixels:
        raise TuneforgeError("--megapixels is empty; give at least one image size, such as --megapixels 1.")
    if bench.min_pixels < 28 * 28 or bench.min_pixels > bench.max_pixels:
        raise TuneforgeError(
            f"--min-pixels is {bench.min_pixels}; give at least {28 * 28} (one image token) and no more than --max-pixels {bench.max_pixels}."
        )
    for megapixels in bench.megapixels:
        width, height = image_size(megapixels) if megapixels > 0 else (0, 0)
        if megapixels <= 0 or width * height < 28 * 28:
            raise TuneforgeError(f"--megapixels {megapixels} makes an image smaller than one image token (28 x 28 pixels); give at least 0.001.")
        if width * height > bench.max_pixels:
            raise TuneforgeError(
                f"--megapixels {megapixels} makes {width} x {height} images, more than --max-pixels {bench.max_pixels}, which the "
                f"processor would scale down; raise --max-pixels to at least {width * height} or give fewer megapixels."
            )
    if bench.tokenizer is not None and not Path(bench.tokenizer).is_dir():
        raise TuneforgeError(f"--tokenizer '{bench.tokenizer}' is not a folder; give a folder of tokenizer files (SmolLM2's), or leave it out to use the local SmolLM2.")


# ---------------------------------------------------------------- the model folder and the samples


def _config(shape: str, tokenizer):
    from transformers import Qwen2_5_VLConfig

    fields = SHAPES[shape]
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    )}
    text = dict(fields["text"], pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    text["vocab_size"] = text["vocab_size"] or len(tokenizer)
    if text["vocab_size"] < len(tokenizer):
        raise TuneforgeError(f"The tokenizer has {len(tokenizer)} tokens, more than shape '{shape}''s vocabulary of {text['vocab_size']}; give a smaller --tokenizer.")
    config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(fields["vision"]), tie_word_embeddings=False, **ids)
    config.architectures = [ARCHITECTURE]
    return config


def _processor(tokenizer, bench: BenchVLOptions, patch: int, merge: int):
    """Qwen2.5-VL's processor with its image settings (the video processor too where transformers can build it)."""
    import transformers

    from .processors import has_video_processors, images_only

    size = {"shortest_edge": bench.min_pixels, "longest_edge": bench.max_pixels}
    settings = dict(size=size, patch_size=patch, merge_size=merge, temporal_patch_size=2)
    if has_video_processors():
        from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        return transformers.Qwen2_5_VLProcessor(Qwen2VLImageProcessor(**settings), tokenizer, Qwen2VLVideoProcessor(**settings))
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return images_only(transformers.Qwen2_5_VLProcessor)(Qwen2VLImageProcessorPil(**settings), tokenizer, None)


def write_model_folder(path: Path, bench: BenchVLOptions):
    """A checkpoint folder without weights: config.json, the tokenizer, the processor settings. Returns the config."""
    from .testing.qwen_vl import qwen_vl_tokenizer

    tokenizer = qwen_vl_tokenizer(bench.tokenizer)
    config = _config(bench.shape, tokenizer)
    vision = config.vision_config
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    _processor(tokenizer, bench, vision.patch_size, vision.spatial_merge_size).save_pretrained(path)
    return config


def synthetic_image(path: Path, megapixels: float, seed: int) -> tuple[int, int]:
    """A seeded JPEG of ``megapixels``: a gradient with boxes, lines and dots (something for the encoder to compress)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    width, height = image_size(megapixels)
    base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(base)
    colour = lambda: tuple(rng.randrange(256) for _ in range(3))  # noqa: E731
    for _ in range(24):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(1, max(2, width // 4)), rng.randrange(1, max(2, height // 4))
        draw.rectangle([x, y, x + w, y + h], outline=colour(), width=max(1, width // 400), fill=colour() if rng.random() < 0.3 else None)
    for _ in range(40):
        draw.line([rng.randrange(width), rng.randrange(height), rng.randrange(width), rng.randrange(height)], fill=colour(), width=max(1, width // 300))
    for _ in range(200):
        x, y, r = rng.randrange(width), rng.randrange(height), max(1, width // 200)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour())
    base.save(path, format="JPEG", quality=90)
    return width, height


def _word_ids(tokenizer) -> list[int]:
    """Ids of the vocabulary's plain words (a space and letters): random text of them tokenizes back to as many tokens."""
    special = set(tokenizer.all_special_ids)
    words = []
    for token_id in range(tokenizer.vocab_size):
        if token_id in special:
            continue
        text = tokenizer.decode([token_id])
        if text.isascii() and text.startswith(" ") and text[1:].isalpha():
            words.append(token_id)
    return words


def synthetic_samples(template, tokenizer, image_paths: list[Path], count: int, text_tokens: int, seed: int) -> list[dict]:
    """``count`` samples encoded by the family's template: the images, then random words (prompt not learned)."""
    rng = random.Random(seed + 1)
    words = _word_ids(tokenizer)
    images = [{"type": "image_url", "image_url": {"url": str(path)}} for path in image_paths]
    samples = []
    for _ in range(count):
        length = rng.randint(max(2, text_tokens // 2), max(2, text_tokens * 3 // 2))
        prompt = max(1, round(length * PROMPT_SHARE))
        text = lambda n: tokenizer.decode([rng.choice(words) for _ in range(n)]).strip()  # noqa: E731
        messages = [
            {"role": "user", "content": [*images, {"type": "text", "text": text(prompt)}]},
            {"role": "assistant", "content": text(length - prompt)},
        ]
        encoded = template.encode(messages)
        samples.append({"input_ids": encoded.input_ids, "labels": encoded.labels, "extras": encoded.extras})
    return samples


# ---------------------------------------------------------------- measuring


def _meter_class():
    from tuneforge.api import BenchmarkMeter

    class VLMeter(BenchmarkMeter):
        """Also counts images, image tokens and rows (a packed batch is one row of several samples)."""

        def __init__(self, device: str, warmup: int, image_token_id: int) -> None:
            super().__init__(device, warmup)
            self.image_token_id = image_token_id

        def hook(self, module, args, kwargs):
            super().hook(module, args, kwargs)
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is None:
                return
            real = input_ids == self.image_token_id
            if kwargs.get("attention_mask") is not None:
                real = real & kwargs["attention_mask"].bool()
            self.add("image_tokens", int(real.sum()))
            grid = kwargs.get("image_grid_thw")
            self.add("images", 0 if grid is None else int(grid.shape[0]))
            self.add("rows", int(input_ids.shape[0]))
            self.add("forwards", 1)

    return VLMeter


def _memory_reset(torch_device: str) -> None:
    import gc

    gc.collect()
    if torch_device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def run_one(bench: BenchVLOptions, folder: Path, images_dir: Path, megapixels: float, packing: Optional[bool], freeze_tower: Optional[bool]) -> dict:
    """One measured run: the samples of ``megapixels`` images, the model built on the device, trained through sft's path."""
    import torch

    from tuneforge.api import resolve_bundle, sft_benchmark_run

    from .qwen_vl import batch_vision_windows, derive_token_types

    bundle = resolve_bundle(str(folder), check_template=False, family_options={"max_pixels": bench.max_pixels, "min_pixels": bench.min_pixels})
    paths, sizes = [], []
    for index in range(bench.images_per_sample):
        path = images_dir / f"{megapixels:g}mp-{index}.jpg"
        sizes.append(synthetic_image(path, megapixels, bench.seed * 1000 + index))
        paths.append(path)
    count = (bench.warmup_steps + bench.steps) * bench.samples_per_step
    started = time.perf_counter()
    samples = synthetic_samples(bundle.template, bundle.tokenizer, paths, count, bench.text_tokens, bench.seed)
    encode_seconds = time.perf_counter() - started
    image_id = bundle.template.image_id
    grid = samples[0]["extras"]["image_grid_thw"]
    merge = bundle.hf_config.vision_config.spatial_merge_size
    tokens_per_image = [int(n) for n in (grid.prod(-1) // merge**2).tolist()]
    resized = [(int(w) * bundle.hf_config.vision_config.patch_size, int(h) * bundle.hf_config.vision_config.patch_size) for _, h, w in grid.tolist()]
    options = {
        "train_type": "lora", "lora_rank": bench.lora_rank, "lora_alpha": bench.lora_alpha, "lora_dropout": bench.lora_dropout,
        "freeze_vision_tower": freeze_tower, "freeze_aligner": bench.freeze_aligner, "packing": packing,
        "gradient_checkpointing": bench.gradient_checkpointing, "attn_implementation": bench.attn_implementation,
        "device": bench.device, "torch_dtype": bench.torch_dtype, "learning_rate": bench.learning_rate, "seed": bench.seed,
        "per_device_batch_size": bench.samples_per_step, "max_steps": bench.warmup_steps + bench.steps,
    }
    meter_holder: dict[str, Any] = {}

    def build(setup):
        torch.manual_seed(bench.seed)
        config = bundle.hf_config
        log(f"building {bench.shape} with random weights on {setup.device.torch_device} ({setup.dtype_name}, attention {setup.config.attn_implementation or 'sdpa'})")
        from transformers import AutoModelForImageTextToText

        meter.device = setup.device.torch_device  # timed steps synchronize with it
        begun = time.perf_counter()
        with torch.device(setup.device.torch_device):
            model = AutoModelForImageTextToText.from_config(
                config, dtype=setup.dtype, attn_implementation=setup.config.attn_implementation or "sdpa", trust_remote_code=False
            )
        meter_holder["build_seconds"] = time.perf_counter() - begun
        return batch_vision_windows(derive_token_types(model))

    meter = _meter_class()("cpu", bench.warmup_steps, image_id)
    label = f"{megapixels:g} MP, {'packed' if packing else 'unpacked' if packing is False else 'packing default'}, tower {'trained' if freeze_tower is False else 'frozen'}"
    log(f"{label}: {bench.warmup_steps} + {bench.steps} steps of {bench.samples_per_step} samples, {len(samples[0]['input_ids'])} tokens in the first ...")
    try:
        result = sft_benchmark_run(options, samples, build, meter, bundle=bundle)
    except torch.cuda.OutOfMemoryError as exc:
        result = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
    except TuneforgeError:
        raise
    except Exception as exc:  # one run's failure must not hide the others' figures
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        _memory_reset(meter.device)
    result.pop("sample_lengths", None)
    fed_samples = len(samples)
    run = {
        "label": label, "megapixels": megapixels, "image_size": sizes[0], "resized_to": resized[0],
        "images_per_sample": bench.images_per_sample, "image_tokens_per_image": tokens_per_image,
        "samples": fed_samples, "sample_tokens": [len(s["input_ids"]) for s in samples],
        "torch_device": meter.device, "encode_seconds": encode_seconds, **{k: v for k, v in meter_holder.items()}, **result,
    }
    if "error" not in result:
        seconds = result["seconds"]
        timed = result["timed_steps"] * bench.samples_per_step
        run["timed_samples"] = timed
        run["packed"] = result.get("rows", timed) < timed
        run["text_tokens"] = result["tokens"] - result.get("image_tokens", 0)
        run["images_per_s"] = result.get("images", 0) / seconds if seconds else None
        run["samples_per_s"] = timed / seconds if seconds else None
    return run


# ---------------------------------------------------------------- the report


def _device_name(torch_device: str) -> str:
    if torch_device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine() or "cpu"


def plan(bench: BenchVLOptions) -> list[tuple[float, Optional[bool], Optional[bool]]]:
    """(megapixels, packing, freeze the vision tower) of each run."""
    if not bench.sweep:
        return [(mp, bench.packing, bench.freeze_vision_tower) for mp in bench.megapixels]
    return [(mp, packing, frozen) for mp in bench.megapixels for frozen in (True, False) for packing in (False, True)]


def benchmark(bench: BenchVLOptions, on_run=None) -> dict:
    """Every run of ``plan(bench)``; ``on_run(report)`` is handed the report so far after each (``complete`` false until the last)."""
    check(bench)
    started = time.perf_counter()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-vl-") as work:
        folder, images_dir = Path(work) / "model", Path(work) / "images"
        images_dir.mkdir()
        config = write_model_folder(folder, bench)
        log(f"wrote the {bench.shape} configuration, tokenizer and processor (no weights) to a temporary folder")
        settings = plan(bench)
        for megapixels, packing, frozen in settings:
            runs.append(run_one(bench, folder, images_dir, megapixels, packing, frozen))
            report = _report(bench, config, runs, started, complete=len(runs) == len(settings))
            if on_run is not None:
                on_run(report)
    return report


def _report(bench: BenchVLOptions, config, runs: list[dict], started: float, complete: bool) -> dict:
    import torch
    import transformers

    device = next((r["settings"] for r in runs if "settings" in r), {})
    return {
        "shape": bench.shape,
        "model_config": {"text": dict(SHAPES[bench.shape]["text"], vocab_size=config.text_config.vocab_size), "vision": SHAPES[bench.shape]["vision"]},
        "device": _device_name(runs[0]["torch_device"]),
        "text_mix": f"{bench.text_tokens} text tokens a sample on average (uniform within 50%), {int(PROMPT_SHARE * 100)}% prompt, seed {bench.seed}",
        "options": dataclasses.asdict(bench),
        "dtype": device.get("dtype"),
        "seconds": time.perf_counter() - started,
        "complete": complete,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": __import__("peft").__version__,
        "runs": runs,
    }


def table(report: dict) -> str:
    lines = [
        f"{report['shape']} on {report['device']} ({report['dtype']}): {report['text_mix']}",
        f"{'images':<14} {'batches':<8} {'tower':<8} {'tokens/s':>9} {'images/s':>9} {'img tok/s':>9} {'peak GiB':>9} {'trainable':>12}  settings",
    ]
    for run in report["runs"]:
        images = f"{run['images_per_sample']} x {run['megapixels']:g} MP"
        peak = run.get("peak_allocated_gib")
        peak_text = f"{peak:.2f}" if peak is not None else "-"
        if "error" in run:
            lines.append(f"{images:<14} {'':<8} {'':<8} {'-':>9} {'-':>9} {'-':>9} {peak_text:>9} {'':>12}  {run['label']}: {run['error']}")
            continue
        s = run["settings"]
        tower = "frozen" if s.get("freeze_vision_tower", True) else "trained"
        batches = "packed" if run["packed"] else "padded"
        image_rate = run["image_tokens"] / run["seconds"] if run["seconds"] else 0
        settings = (
            f"{run['image_tokens_per_image'][0]:,} tokens an image ({run['resized_to'][0]}x{run['resized_to'][1]}), "
            f"{run['tokens'] / max(run['timed_samples'], 1):,.0f} tokens a sample, {s['samples_per_step']} a step, "
            f"{s['attn_implementation']} (vision tower {s.get('vision_attn_implementation', 'sdpa')}), checkpointing {s['checkpointing_policy']}, lora r{s['lora_rank']}"
            f"{'' if s.get('packing') == run['packed'] else ' (packing asked, batches padded)'}"
        )
        lines.append(
            f"{images:<14} {batches:<8} {tower:<8} {run['tokens_per_s']:>9,.0f} {run['images_per_s']:>9.2f} {image_rate:>9,.0f} {peak_text:>9} {run['trainable_parameters']:>12,}  {settings}"
        )
    return "\n".join(lines)


def run_bench_vl(bench: BenchVLOptions) -> dict:
    def write(report: dict) -> None:  # after every run: a run cut short by a time limit keeps the figures so far
        Path(bench.output).parent.mkdir(parents=True, exist_ok=True)
        partial = Path(f"{bench.output}.partial")
        partial.write_text(json.dumps(report, indent=2), encoding="utf-8")
        partial.replace(bench.output)
        if not report["complete"]:
            run = report["runs"][-1]
            figures = run.get("error") or f"{run['tokens_per_s']:,.0f} tokens/s, {run['images_per_s']:.2f} images/s, peak {run['peak_allocated_gib'] or 0:.2f} GiB"
            log(f"{run['label']}: {figures}; the runs so far are in {bench.output}")

    report = benchmark(bench, on_run=write)
    print(table(report))
    log(f"wrote the full report to {bench.output} ({report['seconds']:.0f} s in all)")
    return report


def cli_commands():
    yield Command(
        name="bench-vl",
        description=(
            "Train LoRA on a random-weight Qwen2.5-VL model of a named shape with synthetic images through the sft path and "
            "report tokens/s, images/s and peak memory (docs/performance.md). CONFIG_FILE: optional YAML."
        ),
        options=BenchVLOptions,
        run=run_bench_vl,
    )
