"""The ``--compare ms-swift`` runner of ``tuneforge bench train``: the same samples through ms-swift's ``swift sft``.

ms-swift 4.x pins older transformers, peft, trl and datasets than tuneforge, so it
runs in a child process whose ``PYTHONPATH`` starts with ``--ms-swift-path`` (a
``pip install --target`` folder of ms-swift and the versions it needs). The parent
saves the random-weight model, a tokenizer that covers its vocabulary and the
bench's samples (token ids and labels, exactly as the other runners get them) into a
temporary folder, then runs ``python -m tuneforge.bench.ms_swift JOB.json``.

The child writes the samples as an ms-swift cached dataset (``datasets``'
``save_to_disk`` with a ``lengths`` column, what ``--cached_dataset`` loads) and runs
ms-swift's sft pipeline in-process with the bench's settings. ms-swift 4.x caches
raw conversations, not token ids (its template encodes each row while training), so
the child lets the template pass rows that already hold ``input_ids`` through as
encoded; everything after that (the dataset wrapper, the collator, the trainer, the
loss) is ms-swift's own. A trainer callback and a forward pre-hook time the
optimizer steps and count real tokens with the bench's ``Meter``; the child writes
that, its peak CUDA memory and the settings ms-swift used to ``result.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from ..errors import TuneforgeError

RUNNER = "ms-swift"
REQUIREMENTS = Path(__file__).with_name("ms-swift-requirements.txt")
LIGER = "liger-kernel==0.8.5"  # for --ms-swift-liger; Triton kernels, so CUDA only

# transformers config class -> (ms-swift model_type, template). ms-swift matches a
# local folder by its name, which says nothing here, so both are given.
MODEL_TYPES = {"Qwen2Config": ("qwen2", "qwen2_5"), "Qwen3Config": ("qwen3", "qwen3"), "LlamaConfig": ("llama", "llama3")}

# Special tokens of the templates above; the rest of the vocabulary is plain words.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]


def _child_env(path: str | None, device: str) -> dict:
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(path)] + [p for p in [env.get("PYTHONPATH")] if p])
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the same device as the other runners
    return env


def check_installed(path: str | None, *, liger: bool = False) -> str:
    """ms-swift's version as the child will import it, or a one-sentence error naming the path and the fix."""
    probe = "import importlib.metadata as m, swift; print(m.version('ms-swift'))" + ("; import liger_kernel" if liger else "")
    done = subprocess.run([sys.executable, "-c", probe], env=_child_env(path, "cpu"), capture_output=True, text=True)
    where = f"with --ms-swift-path {path}" if path else "in this Python environment (no --ms-swift-path given)"
    version = done.stdout.strip()
    if done.returncode == 0 and version.split(".")[0] == "4":
        return version
    if done.returncode == 0:
        raise TuneforgeError(
            f"--compare ms-swift: ms-swift {version} is installed {where}, but the runner passes ms-swift 4.x's arguments; "
            f"install the pinned one with `pip install --no-deps --upgrade --target DIR -r {REQUIREMENTS}` and pass --ms-swift-path DIR."
        )
    why = (done.stderr.strip().splitlines() or ["no output"])[-1]
    if liger and "liger_kernel" in why:
        raise TuneforgeError(
            f"--ms-swift-liger: liger-kernel cannot be imported {where} ({why}); add it there with "
            f"`pip install --no-deps --upgrade --target DIR {LIGER}`."
        )
    raise TuneforgeError(
        f"--compare ms-swift: ms-swift cannot be imported {where} ({why}); install it and the versions it pins with "
        f"`pip install --no-deps --upgrade --target DIR -r {REQUIREMENTS}` and pass --ms-swift-path DIR."
    )


def save_tokenizer(directory: Path, vocab_size: int) -> None:
    """A word-level tokenizer with one entry for every id of the model (the samples are ids already)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<|endoftext|>", pad_token="<|endoftext|>", eos_token="<|im_end|>",
        chat_template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    )
    tokenizer.save_pretrained(directory)


def run_ms_swift(bench, samples: list[dict], device, dtype, *, gradient_checkpointing: bool) -> dict:
    """Save the model, tokenizer and samples, run ms-swift's sft on them in a child process, return its figures."""
    import torch

    from .train import SHAPES, _memory_reset, build_model, log, model_config

    steps = bench.warmup_steps + bench.steps
    micro = bench.compare_micro_batch or bench.samples_per_step
    work = Path(tempfile.mkdtemp(prefix="tuneforge-ms-swift-"))
    try:
        model = build_model(bench.shape, dtype, device.torch_device, "sdpa", bench.seed)
        model.save_pretrained(work / "model")
        del model
        _memory_reset(device.torch_device)  # the child needs the memory
        save_tokenizer(work / "model", model_config(bench.shape).vocab_size)
        used = samples[: steps * bench.samples_per_step]
        (work / "samples.json").write_text(json.dumps(used))
        model_type, template = MODEL_TYPES[SHAPES[bench.shape][0]]
        job = {
            "work_dir": str(work), "model_dir": str(work / "model"), "samples": str(work / "samples.json"),
            "result": str(work / "result.json"), "device": device.torch_device, "threads": torch.get_num_threads(),
            "warmup_steps": bench.warmup_steps, "steps": steps, "samples_per_step": bench.samples_per_step,
            "micro_batch": micro, "max_length": max(len(s["input_ids"]) for s in used),
            "model_type": model_type, "template": template, "dtype": str(dtype).removeprefix("torch."),
            "lora_rank": bench.lora_rank, "lora_alpha": bench.lora_alpha, "lora_dropout": bench.lora_dropout,
            "target_modules": list(bench.target_modules), "gradient_checkpointing": gradient_checkpointing,
            "learning_rate": bench.learning_rate, "seed": bench.seed, "liger": bench.ms_swift_liger,
        }
        (work / "job.json").write_text(json.dumps(job, indent=2))
        log(f"ms-swift: running `python -m tuneforge.bench.ms_swift {work / 'job.json'}`"
            + (f" with {bench.ms_swift_path} first on PYTHONPATH" if bench.ms_swift_path else ""))
        code, tail = _relay(
            [sys.executable, "-m", "tuneforge.bench.ms_swift", str(work / "job.json")],
            _child_env(bench.ms_swift_path, device.torch_device),
        )
        result_path = work / "result.json"
        if result_path.exists():
            return json.loads(result_path.read_text())
        return {
            "runner": RUNNER, "error": f"ms-swift's process exited with code {code} and no result: {tail}",
            "peak_allocated_gib": None, "peak_reserved_gib": None,  # not this process's
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _relay(command: list[str], env: dict) -> tuple[int, str]:
    """Run ``command``, copying its output to standard error; its exit code and last line."""
    last = "no output"
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as child:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stderr.write(line)
            last = line.strip() or last
        code = child.wait()
    return code, last


# ---------------------------------------------------------------- the child process


def swift_arguments(job: dict, dataset_dir: str, *, padding_free: bool) -> list[str]:
    """``swift sft`` arguments for the bench's settings."""
    flag = lambda value: "true" if value else "false"  # noqa: E731
    targets = job["target_modules"]
    return [
        "--model", job["model_dir"], "--model_type", job["model_type"], "--template", job["template"],
        "--torch_dtype", job["dtype"], "--bf16", flag(job["dtype"] == "bfloat16"), "--fp16", flag(job["dtype"] == "float16"),
        "--attn_impl", "flash_attn" if padding_free else "sdpa", "--padding_free", flag(padding_free),
        "--tuner_type", "lora", "--lora_rank", str(job["lora_rank"]), "--lora_alpha", str(job["lora_alpha"]),
        "--lora_dropout", str(job["lora_dropout"]), "--target_modules", *targets,
        "--cached_dataset", dataset_dir, "--max_length", str(job["max_length"]), "--split_dataset_ratio", "0",
        "--dataset_shuffle", "false", "--train_dataloader_shuffle", "false",
        "--per_device_train_batch_size", str(job["micro_batch"]),
        "--gradient_accumulation_steps", str(job["samples_per_step"] // job["micro_batch"]),
        "--max_steps", str(job["steps"]), "--learning_rate", str(job["learning_rate"]),
        "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
        "--gradient_checkpointing", flag(job["gradient_checkpointing"]),
        "--save_strategy", "no", "--eval_strategy", "no", "--check_model", "false", "--logging_first_step", "false", "--logging_steps", str(10**9), "--report_to", "none",
        "--output_dir", os.path.join(job["work_dir"], "output"), "--add_version", "false",
        "--seed", str(job["seed"]), "--data_seed", str(job["seed"]), "--use_liger_kernel", flag(job["liger"]),
    ]


def _versions() -> dict:
    import importlib.metadata as metadata

    found = {}
    for name in ("ms-swift", "transformers", "peft", "trl", "datasets", "accelerate", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def train(job: dict) -> dict:
    import importlib.util

    import torch
    from datasets import Dataset
    from swift.pipelines import SwiftSft
    from transformers import TrainerCallback

    from .train import Meter, _memory_peak

    torch.set_num_threads(job["threads"])
    samples = json.loads(Path(job["samples"]).read_text())
    dataset_dir = os.path.join(job["work_dir"], "cached_dataset")
    Dataset.from_dict({
        "input_ids": [s["input_ids"] for s in samples],
        "labels": [s["labels"] for s in samples],
        "lengths": [[len(s["input_ids"])] for s in samples],
    }).save_to_disk(dataset_dir)
    # ms-swift's padding_free needs a flash attention implementation, and that the flash_attn package.
    padding_free = job["device"].startswith("cuda") and importlib.util.find_spec("flash_attn") is not None
    meter = Meter(job["device"], job["warmup_steps"])
    seen: dict = {}

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(meter.hook, with_kwargs=True)
            seen["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            seen["attn"] = getattr(model.config, "_attn_implementation", None)
            seen["args"] = args
            if job["device"].startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            meter._last = meter.sync()

        def on_step_end(self, args, state, control, **kwargs):
            meter.step_end()

    class BenchSft(SwiftSft):
        def _prepare_template(self):
            super()._prepare_template()
            template, encode = self.template, self.template.encode

            def encoded_rows_as_they_are(inputs, return_template_inputs=False, return_length=False):
                if isinstance(inputs, dict) and "input_ids" in inputs and "messages" not in inputs:
                    n = len(inputs["input_ids"])
                    row = {"input_ids": list(inputs["input_ids"]), "labels": list(inputs["labels"]), "length": n}
                    return {**row, "lengths": [n]} if return_length else row
                return encode(inputs, return_template_inputs=return_template_inputs, return_length=return_length)

            template.encode = encoded_rows_as_they_are

        def train(self, trainer):
            seen["template"] = self.template
            trainer.add_callback(Timing())
            return super().train(trainer)

    sft = BenchSft(swift_arguments(job, dataset_dir, padding_free=padding_free))
    sft.main()
    args, sft_args = seen["args"], sft.args
    settings = {
        "train_type": "lora", "fused_lora": False, "lora_rank": sft_args.lora_rank, "lora_alpha": sft_args.lora_alpha,
        "lora_dropout": sft_args.lora_dropout, "target_modules": list(job["target_modules"]),
        "packing": bool(sft_args.padding_free or sft_args.packing), "attn_implementation": seen["attn"] or sft_args.attn_impl,
        # liger-kernel swaps in its fused (chunked) linear + cross-entropy
        "chunked_loss": bool(args.use_liger_kernel), "gradient_checkpointing": bool(args.gradient_checkpointing),
        "checkpointing_policy": "full" if args.gradient_checkpointing else "off",
        "samples_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "micro_batch": args.per_device_train_batch_size, "dtype": job["dtype"],
        "ms_swift": {
            "versions": _versions(), "model_type": sft_args.model_type, "template": sft_args.template,
            "padding_free": bool(sft_args.padding_free), "packing": bool(sft_args.packing),
            "use_liger_kernel": bool(args.use_liger_kernel), "use_logits_to_keep": args.use_logits_to_keep, "bf16": bool(args.bf16),
            # ms-swift's own rule on one device (trainers/mixin.py, _fix_gradient_checkpointing)
            "checkpoint_use_reentrant": (args.gradient_checkpointing_kwargs or {}).get("use_reentrant", True),
            "train_dataloader_shuffle": bool(args.train_dataloader_shuffle), "group_by_length": bool(args.group_by_length),
            "dataloader_num_workers": args.dataloader_num_workers, "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "optim": getattr(args.optim, "value", str(args.optim)),
            "weight_decay": args.weight_decay, "max_grad_norm": args.max_grad_norm,
            "arguments": swift_arguments(job, dataset_dir, padding_free=padding_free),
        },
    }
    return {"runner": RUNNER, "settings": settings, "trainable_parameters": seen["trainable"], **meter.result(), **_memory_peak(job["device"])}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    try:
        result = train(job)
    except Exception as exc:  # the parent reports it beside the other runners' figures
        traceback.print_exc()
        import torch

        first = (str(exc).splitlines() or [""])[0]
        error = f"out of memory: {first}" if isinstance(exc, torch.cuda.OutOfMemoryError) else f"{type(exc).__name__}: {first}"
        from .train import _memory_peak

        result = {"runner": RUNNER, "error": error, **_memory_peak(job["device"])}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
