"""The options of every command, declared once.

Each dataclass here is both the YAML schema and the source of the CLI flags (see
``tuneforge.options``). A training method's options dataclass extends
``TrainConfig`` with its own fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .options import OptionError, option

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_DATASET = "meeting-minutes"


@dataclass
class ModelOptions:
    """The model a command works on; its family (``--model-family``, else the checkpoint's) adds its own options."""

    __tuneforge_selects__ = {"model_family": "model_families"}

    model: str = option(DEFAULT_MODEL, "A registered model name, a local checkpoint dir, a tuneforge output dir, or a hub id.", group="model")
    model_family: Optional[str] = option(None, "Force a model family instead of matching the checkpoint's config.", group="model")
    template: Optional[str] = option(None, "Chat template name; default: the model family's default ('default' uses the tokenizer's own).", group="model")
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = option("auto", "Weight dtype; auto: bf16 where the device supports it, else float32.", group="model")
    attn_implementation: Optional[str] = option(None, "Attention kernel (sdpa, eager, flash_attention_2, tuneforge_varlen, ...); default: the family's, else tuneforge_varlen for packed training on CUDA, else sdpa.", group="model")
    device: Optional[str] = option(None, "Device name (cpu, cuda, ...); default: the best available; its own options are listed once it is selected.", group="model")
    trust_remote_code: bool = option(False, "Let Python code shipped with the checkpoint (auto_map in its config or tokenizer config) run with your permissions; only for checkpoints you trust. Off: such a checkpoint is refused, whatever standard input says. Not carried over from a run's record.", group="model")
    allow_template_drift: bool = option(False, "Go on when the named --template renders conversations differently from the checkpoint's own chat template (the check runs before any weights load; the difference is recorded in the output dir).", group="model")


@dataclass
class DataOptions:
    dataset: list[str] = option([DEFAULT_DATASET], "A data file (jsonl, json, csv, parquet) or a registered dataset name, optionally NAME:SPLIT.", group="data")
    dataset_format: Optional[str] = option(None, "Force a dataset format instead of detecting it per row.", group="data")
    val_dataset: list[str] = option([], "Validation data (files or names); default: split off --val-split-ratio.", group="data")
    val_split_ratio: float = option(0.0, "Share of the training rows held out for evaluation.", group="data")
    max_samples: Optional[int] = option(None, "Use at most this many training rows (after mixing).", group="data")
    skip_bad_rows: bool = option(False, "Skip and count rows that fit no format instead of failing.", group="data")
    max_length: int = option(2048, "Maximum tokens per sample.", group="data")
    truncation: Literal["drop", "left", "right"] = option("drop", "What to do with samples over --max-length: drop them, or cut tokens from the left or the right.", group="data")
    packing: Optional[bool] = option(None, "Concatenate samples without padding (attention never crosses samples); default: on for CUDA with a method that packs (sft) and a text-only model family or one whose template packs its extras (images), off elsewhere.", group="data")
    train_on_prompt: bool = option(False, "Learn every token, not only the assistant turns.", group="data")
    system: Optional[str] = option(None, "A system prompt added to conversations that have none.", group="data")


@dataclass
class TunerOptions:
    train_type: str = option("lora", "Tuner: lora, dora, qlora, full, freeze, or one a plugin adds; its own options are listed once it is selected.", group="tuner")


@dataclass
class TrainingOptions:
    output_dir: Optional[str] = option(None, "Where the run writes; default: output/<model>-<method>-<time>.", group="training")
    learning_rate: float = option(2e-4, "Peak learning rate.", group="training")
    num_train_epochs: float = option(1.0, "Passes over the training data (ignored when --max-steps > 0).", group="training")
    max_steps: int = option(-1, "Stop after this many optimizer steps (-1: use --num-train-epochs).", group="training")
    per_device_batch_size: int = option(1, "Samples per device per step.", group="training")
    gradient_accumulation_steps: int = option(1, "Steps whose gradients add up before an optimizer step.", group="training")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = option("cosine", "Learning-rate schedule.", group="training")
    warmup_ratio: float = option(0.0, "Share of the steps spent warming up the learning rate.", group="training")
    weight_decay: float = option(0.0, "Weight decay.", group="training")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.", group="training")
    gradient_checkpointing: Optional[bool] = option(None, "Recompute activations to save memory; default: on for accelerators, off on the CPU.", group="training")
    pure_bf16: bool = option(False, "Train whole weights (full and freeze tuners, parts trained whole) in bf16 itself: 8 bytes a trained parameter with AdamW instead of 16, but an update smaller than bf16's step at that weight (about 1/256 of it: a learning rate of 1e-5 on weights near 0.01) is rounded away; default: float32 master weights under bf16 autocast, as FSDP and DeepSpeed keep them.", group="training")
    checkpointing_policy: Literal["full", "selective"] = option("full", "With gradient checkpointing, what each layer recomputes: full (everything; least memory) or selective (keeps the attention kernel's output, recomputes the rest).", group="training")
    sequence_parallel_size: int = option(1, "Cut each packed row across this many processes (Ulysses sequence parallelism: attention exchanges heads among them), for samples too long for one device; must divide the process count and the attention heads; needs packing, the tuneforge_varlen attention and --parallel-backend ddp.", group="training")
    logging_steps: int = option(5, "Log every N steps.", group="training")
    eval_steps: Optional[int] = option(None, "Evaluate every N steps (default: at the end only).", group="training")
    save_steps: int = option(50, "Write a checkpoint every N steps.", group="training")
    save_total_limit: int = option(2, "Keep at most this many checkpoints.", group="training")
    resume: bool = option(False, "Resume from the last complete checkpoint in --output-dir (refused if another run wrote it).", group="training")
    overwrite_output_dir: bool = option(False, "Replace the run in --output-dir (finished or not): everything in the directory is deleted before the new run starts.", group="training")
    parallel_backend: str = option("single", "single, ddp, fsdp, or one a plugin adds.", group="training")
    nproc_per_node: int = option(1, "Processes (devices) to launch on this machine.", group="training")
    nnodes: int = option(1, "Machines (nodes) the run spans; each node runs the same command with its own --node-rank.", group="training")
    node_rank: Optional[int] = option(None, "This node's place among --nnodes, from 0 (the node at --master-addr); needed with several nodes unless SLURM gives it.", group="training")
    master_addr: Optional[str] = option(None, "Address of the node with --node-rank 0, where every node's processes meet; needed with several nodes unless MASTER_ADDR or SLURM gives it.", group="training")
    master_port: Optional[int] = option(None, "Port on --master-addr (default: MASTER_PORT, else one derived from SLURM_JOB_ID under SLURM, else 29500; on one machine, a free one).", group="training")
    seed: int = option(42, "Random seed of the initial adapter weights, dropout and data order (the same seed gives the same weights).", group="training")
    report_to: str = option("none", "Trainer loggers (none, tensorboard, wandb, ...).", group="training")


@dataclass
class TrainConfig(ModelOptions, DataOptions, TunerOptions, TrainingOptions):
    """What every training method shares.

    The tuner, the device and the parallel backend it selects add their own options
    (LoRA's rank, the CUDA device's fused kernels, ...): see ``tuneforge.selection``.
    """

    __tuneforge_selects__ = {"train_type": "tuners", "device": "devices", "parallel_backend": "parallel_backends"}


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning (the core's ``sft`` method)."""


@dataclass
class GenerationOptions:
    max_new_tokens: int = option(512, "Most tokens to generate per answer.", group="generation")
    temperature: float = option(0.0, "Sampling temperature (0: greedy).", group="generation")
    top_p: float = option(1.0, "Nucleus sampling threshold.", group="generation")
    top_k: int = option(0, "Sample among the k most likely tokens (0: off).", group="generation")
    repetition_penalty: float = option(1.0, "Penalty for repeated tokens (1: off).", group="generation")
    seed: Optional[int] = option(None, "Random seed for sampling.", group="generation")


@dataclass
class EngineOptions:
    """The engine an invocation selects; its record's options are added to the command's."""

    __tuneforge_selects__ = {"engine": "inference_engines"}

    engine: str = option("pt", "Inference engine: pt, or one a plugin adds (`tuneforge list engines`); its own options are listed once it is selected.", group="engine")
    engine_option: list[str] = option([], "Deprecated (use the engine's own flag, e.g. --compile): an option of the engine as NAME=VALUE, the value read as YAML.", group="engine")


@dataclass
class InferConfig(ModelOptions, GenerationOptions, EngineOptions):
    model: str = option(DEFAULT_MODEL, "A tuneforge output dir, a registered model name, a local checkpoint dir or a hub id.", group="model")
    input: Optional[str] = option(None, "A jsonl of requests (each a row of any dataset format, or {'messages': [...]}); omit for an interactive chat.")
    output: Optional[str] = option(None, "Where to write the answers (jsonl); default: standard output.")
    batch_size: int = option(8, "Requests generated together.")
    system: Optional[str] = option(None, "System prompt for the interactive chat.")


@dataclass
class EvalConfig(ModelOptions, GenerationOptions, EngineOptions):
    dataset: str = option(DEFAULT_DATASET, "A registered dataset that can score answers (see `tuneforge list datasets`).")
    split: str = option("test", "Which split to answer.")
    limit: Optional[int] = option(None, "Answer at most this many rows.")
    batch_size: int = option(8, "Requests generated together.")
    output: Optional[str] = option(None, "Write the answers and scores to this jsonl.")
    constrained: bool = option(False, "Constrained decoding for tool-calling datasets (pt engine, outlines-core): each answer is either tool calls valid against its row's tools, in the chat template's markup, or a plain-text refusal.")
    tool_choice: Literal["auto", "required"] = option("auto", "With --constrained: auto (tool calls or a plain-text refusal) or required (always tool calls, held as the server's tool_choice 'required' holds them: a command to refuse gets a call too).")
    parallel_tool_calls: bool = option(True, "With --tool-choice required: --no-parallel-tool-calls holds each answer to exactly one call, as the server's parallel_tool_calls false does.")


@dataclass
class TemplateCheckConfig:
    """``tuneforge template check``: the template in use against the checkpoint's own chat template."""

    __tuneforge_selects__ = {"model_family": "model_families"}

    model: str = option(help="A registered model name, a local checkpoint dir, a tuneforge output dir, or a hub id.", group="model")
    template: Optional[str] = option(None, "The tuneforge template to check; default: the one a command would use (the run's, else the family's).", group="model")
    model_family: Optional[str] = option(None, "Force a model family instead of matching the checkpoint's config.", group="model")
    trust_remote_code: bool = option(False, "Let Python code shipped with the checkpoint run with your permissions; only for checkpoints you trust.", group="model")
    dataset: list[str] = option([], "Also render the first rows of these datasets (files or registered names).", group="data")
    dataset_format: Optional[str] = option(None, "Force a dataset format instead of detecting it per row.", group="data")
    rows: int = option(20, "How many rows of each --dataset to render.", group="data")
    show: int = option(5, "Show at most this many differences in full.")


# The built-in exporter's name, and the ``--format`` that names it (its alias, and the default).
MERGE_LORA_EXPORTER = "merge-lora"
MERGED_FORMAT = "merged"


@dataclass
class ExportConfig:
    """``tuneforge export``; the exporter ``--format`` selects adds its own options."""

    # The model family is the run's (never forced here): its options override what the run recorded.
    __tuneforge_selects__ = {"format": "exporters", "model_family": "model_families"}

    model: str = option(help="A tuneforge output dir.")
    output_dir: str = option(help="Where to write the exported model.")
    format: str = option(MERGED_FORMAT, "The exporter: merged (a LoRA adapter merged into its base: a standalone checkpoint), or one a plugin adds (`tuneforge list exporters`); its own options are listed once it is selected.")
    exporter: Optional[str] = option(None, "Deprecated: use --format.")
    merge_lora: bool = option(False, "Deprecated: use --format merged.")
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = option("auto", "dtype of the written weights (auto: as trained).")
    trust_remote_code: bool = option(False, "Let Python code shipped with the base checkpoint run with your permissions (only for checkpoints you trust); a run trained with it needs it again here.")
    allow_template_drift: bool = option(False, "Go on when the run's template renders conversations differently from its tokenizer's chat template (recorded in the export record).")


def export_format(config) -> str:
    """The exporter an export config names: ``format``, or the deprecated ``exporter``/``merge_lora``
    of a config made without ``options.build`` (which turns them into ``format``)."""
    name = config.exporter or config.format
    if config.merge_lora:
        if config.exporter not in (None, MERGE_LORA_EXPORTER, MERGED_FORMAT):
            raise OptionError(
                f"--merge-lora and --exporter '{config.exporter}' ask for different exporters; pass only one of them."
            )
        name = MERGED_FORMAT
    return name
