"""Every extension point of tuneforge.

A plugin is a module (or object) with functions named after these specs and
decorated with ``tuneforge.hookimpl``; a distribution exposes it through the
``tuneforge`` entry-point group::

    [project.entry-points.tuneforge]
    mistral = "tuneforge_mistral.plugin"

Registration hooks take no arguments and return (or yield) typed records from
``tuneforge.records``; the registry collects them, checks that names are unique
within a kind and answers look-ups by name. The core's own defaults are plugins
registered through these very hooks (see ``tuneforge/builtin/``).
"""

from __future__ import annotations

from typing import Iterable

import pluggy

from .records import (
    ChatTemplate,
    Command,
    DatasetFormat,
    DatasetSource,
    Device,
    DoctorChecks,
    Exporter,
    InferenceEngine,
    ModelFamily,
    ModelSource,
    ParallelBackend,
    QuickstartTask,
    RewardFunction,
    TrainingMethod,
    Tuner,
)

PROJECT = "tuneforge"
hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def tuneforge_model_families() -> Iterable[ModelFamily]:
    """Model families: which checkpoints they match and how they load and train.

    Example::

        @tuneforge.hookimpl
        def tuneforge_model_families():
            yield ModelFamily(
                name="mistral",
                description="Mistral 7B and relatives",
                architectures=["MistralForCausalLM"],
                model_types=["mistral"],
                default_template="default",
                lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            )
    """


@hookspec
def tuneforge_models() -> Iterable[ModelSource]:
    """Models known by name, resolved to a local checkpoint directory.

    Example::

        @tuneforge.hookimpl
        def tuneforge_models():
            yield ModelSource(
                name="my-model",
                description="Our in-house 1B checkpoint",
                resolve=lambda: "/models/in-house-1b",
            )
    """


@hookspec
def tuneforge_chat_templates() -> Iterable[ChatTemplate]:
    """Chat templates: conversation (+ tools) to token ids with a loss mask.

    Example::

        from tuneforge.templates import SegmentTemplate

        @tuneforge.hookimpl
        def tuneforge_chat_templates():
            yield ChatTemplate(
                name="mistral",
                description="[INST] ... [/INST] layout",
                build=lambda tokenizer: SegmentTemplate(tokenizer, render=render_mistral),
            )
    """


@hookspec
def tuneforge_dataset_formats() -> Iterable[DatasetFormat]:
    """Dataset row formats: recognise a row and convert it to a conversation.

    Example::

        @tuneforge.hookimpl
        def tuneforge_dataset_formats():
            yield DatasetFormat(
                name="qa",
                description="rows with 'question' and 'answer'",
                detect=lambda row: {"question", "answer"} <= row.keys(),
                convert=lambda row: {"messages": [
                    {"role": "user", "content": row["question"]},
                    {"role": "assistant", "content": row["answer"]}]},
            )
    """


@hookspec
def tuneforge_datasets() -> Iterable[DatasetSource]:
    """Datasets known by name, resolved to a local file per split.

    Example::

        @tuneforge.hookimpl
        def tuneforge_datasets():
            yield DatasetSource(
                name="support-dialogues",
                description="Our support chats, exported nightly",
                resolve=lambda split: f"/data/support/{split}.jsonl",
                splits=("train", "test"),
            )
    """


@hookspec
def tuneforge_tuners() -> Iterable[Tuner]:
    """Tuners: wrap a model for training (lora, dora, full, freeze, ...).

    A tuner whose base loads quantized sets ``quantizes_base=True``; the parallel
    backend then places the base (``ParallelBackend.load_kwargs``) or refuses it.
    A tuner owns its fusion: ``fuse(model) -> int`` (the built-in lora and qlora:
    tuneforge's fused LoRA product) runs where ``--fused-lora`` is on.

    Example::

        @tuneforge.hookimpl
        def tuneforge_tuners():
            yield Tuner(
                name="bias-only",
                description="train only bias terms",
                prepare=train_only_biases,
            )
    """


@hookspec
def tuneforge_training_methods() -> Iterable[TrainingMethod]:
    """Training methods (sft, dpo, ...) with their own options dataclass.

    ``supports_packing=True`` (a method whose data pipeline packs samples) lets the
    device's packing default apply; without it ``--packing`` is refused.

    Example::

        @tuneforge.hookimpl
        def tuneforge_training_methods():
            yield TrainingMethod(
                name="dpo",
                description="Direct preference optimisation",
                options=DPOOptions,
                run=run_dpo,
                supports_packing=False,  # chosen and rejected answers are batched side by side
            )
    """


@hookspec
def tuneforge_parallel_backends() -> Iterable[ParallelBackend]:
    """Parallel backends: how to launch processes, configure the trainer and place a quantized base.

    Example::

        @tuneforge.hookimpl
        def tuneforge_parallel_backends():
            yield ParallelBackend(
                name="deepspeed-z3",
                description="DeepSpeed ZeRO stage 3",
                launch_command=lambda n: ["torchrun", f"--nproc-per-node={n}"],
                training_args=lambda config: {"deepspeed": ZERO3_CONFIG},
                shards_parameters=True,  # ZeRO-3 keeps each process's piece of the weights only
                supports_quantized_base=False,  # --train-type qlora is refused before loading
            )
    """


@hookspec
def tuneforge_devices() -> Iterable[Device]:
    """Devices: availability, torch device type, distributed backend, memory, fast-path defaults.

    The core asks the record for everything that differs between devices and never
    tests a device's name, so a device registered here gets exactly the defaults it
    declares (``FastPath``: packing, varlen attention, chunked loss, fused kernels,
    gradient checkpointing; all off unless given). A device that brings its own fused
    operators names them in ``kernels`` (a ``DeviceKernels``: RMSNorm, SwiGLU, rotary
    embedding, varlen attention), which the fast path then uses in place of the core's;
    ``unavailable`` says what a command asking for it by name is missing, and the fix.

    Example::

        @tuneforge.hookimpl
        def tuneforge_devices():
            yield Device(
                name="npu",
                description="Ascend NPU through torch_npu",
                torch_device="npu",
                is_available=npu_is_available,
                supports_bf16=lambda: True,
                distributed_backend="hccl",
                peak_memory=lambda: torch.npu.max_memory_allocated(),
                empty_cache=lambda: torch.npu.empty_cache(),
                fast_path=FastPath(packing=True, fused_kernels=True, gradient_checkpointing=True),
                kernels=lambda: DeviceKernels(rms_norm=npu_rms_norm, swiglu=npu_swiglu),
                unavailable=lambda: "--device npu needs torch_npu: pip install 'torch-npu==2.13.*'.",
                priority=20,
            )
    """


@hookspec
def tuneforge_inference_engines() -> Iterable[InferenceEngine]:
    """Inference engines: a factory for an object serving the engine protocol.

    Example::

        @tuneforge.hookimpl
        def tuneforge_inference_engines():
            yield InferenceEngine(
                name="vllm",
                description="vLLM with paged attention",
                create=lambda bundle, **options: VLLMEngine(bundle, **options),  # a ModelBundle
            )
    """


@hookspec
def tuneforge_exporters() -> Iterable[Exporter]:
    """Exporters: turn a trained output directory into a deployable artifact.

    Example::

        @tuneforge.hookimpl
        def tuneforge_exporters():
            yield Exporter(
                name="awq",
                description="4-bit AWQ quantization",
                export=export_awq,
            )
    """


@hookspec
def tuneforge_cli_commands() -> Iterable[Command]:
    """Register ``tuneforge`` sub-commands built from an options dataclass.

    The core builds each the way it builds its own (sft, infer, ...): its flags and
    YAML keys come from ``options`` (and the records it selects), an optional YAML
    file is its argument, and ``run(config)`` gets the checked config. A plugin whose
    hook raises, or whose record is invalid, is set aside; a name the core uses is
    refused with a warning.

    Example::

        @dataclass
        class GreetOptions:
            name: str = option("world", "Who to greet.")

        @tuneforge.hookimpl
        def tuneforge_cli_commands():
            yield Command(
                name="greet",
                description="Greet someone. CONFIG_FILE: optional YAML.",
                options=GreetOptions,
                run=lambda config: print(f"hello {config.name}"),
            )
    """


@hookspec
def tuneforge_quickstart_tasks() -> Iterable[QuickstartTask]:
    """Jobs for ``tuneforge quickstart --task NAME``: a model, a dataset and a recipe that fit.

    The quickstart answers the task's held-out splits with the model, fine-tunes it
    with the recipe on the dataset's train split, answers them again and reports the
    dataset's scores before and after, split by split.

    Example::

        @tuneforge.hookimpl
        def tuneforge_quickstart_tasks():
            yield QuickstartTask(
                name="tickets",
                description="Triage support tickets",
                model="smollm2-135m-instruct",
                dataset="my-tickets",
                recipe={"train_type": "lora", "learning_rate": 1e-3, "max_length": 1024},
                eval_splits=("test",),
            )
    """


@hookspec
def tuneforge_reward_functions() -> Iterable[RewardFunction]:
    """Reward functions: score one sampled completion against its row, for online RL.

    A run selects them by name with an optional weight (``NAME[:WEIGHT]``); the
    sample's reward is the weighted sum (``tuneforge.rewards.combine``). One that raises
    on a sample gives that sample 0 for it and is reported. ``tuneforge list rewards``
    shows them; a user's Python file implementing this hook adds its own.

    Example::

        @tuneforge.hookimpl
        def tuneforge_reward_functions():
            yield RewardFunction(
                name="polite",
                description="1 when a refusal says sorry",
                score=lambda row, completion: float("sorry" in str(completion).lower()),
            )
    """


@hookspec
def tuneforge_commands(cli) -> None:
    """Add sub-commands to the ``tuneforge`` click group ``cli``.

    Example::

        @tuneforge.hookimpl
        def tuneforge_commands(cli):
            @cli.command()
            def hello():
                "Say hello."
                click.echo("hello")
    """


@hookspec
def tuneforge_doctor_checks() -> DoctorChecks:
    """What ``tuneforge doctor`` checks for this plugin: its heavy imports and known-bad versions.

    Data only, no code: ``imports`` names each heavy module the plugin needs and what to
    pip install for it (doctor imports each in a subprocess, so a crashing import cannot
    take it down); ``known_bad`` lists version combinations that install together but
    fail, each with what fails and the pip command that fixes it.

    Example::

        @tuneforge.hookimpl
        def tuneforge_doctor_checks():
            return DoctorChecks(
                imports={"acme_runtime": "acme-runtime>=3"},
                known_bad=[KnownBad(
                    packages={"acme-runtime": "<3.2", "torch": ">=2.9"},
                    why="acme-runtime before 3.2 cannot load torch 2.9's kernels",
                    fix="pip install 'acme-runtime>=3.2'",
                )],
            )
    """
