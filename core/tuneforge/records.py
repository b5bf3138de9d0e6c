"""Typed records that registration hooks return.

Every record is a frozen dataclass with a unique ``name`` (within its kind), a
one-line ``description`` and the callables its kind needs. Any record may carry
``options``: a dataclass of its own options declared with ``tuneforge.options.option``;
a command's flags and YAML keys are its own plus those of the records an
invocation selects (``--train-type lora`` adds the LoRA tuner's). Heavy libraries are
imported inside those callables, never when a record is built, so listing plugins
stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from .options import option


@dataclass(frozen=True)
class ModelParts:
    """The named parts of a model whose family has more than a language model (a vision-language model).

    Each is the module-name prefix of that part in the loaded model (``"model.vision_model"``);
    None where the model has no such part. ``--freeze-language-model``, ``--freeze-vision-tower``
    and ``--freeze-aligner`` say which train, LoRA's ``--target-parts`` which LoRA adapts (see
    ``tuneforge.parts``); a prefix inside another's owns what lies under it.
    """

    language_model: str | None = None
    vision_tower: str | None = None
    aligner: str | None = None

    def prefixes(self) -> dict[str, str]:
        """The named parts that the model has, name -> module-name prefix."""
        return {name: getattr(self, name) for name in ("language_model", "vision_tower", "aligner") if getattr(self, name)}


@dataclass(frozen=True)
class ModelFamily:
    """A family of checkpoints that load and train the same way.

    ``architectures`` and ``model_types`` are matched against a checkpoint's
    ``config.json``; the first family that matches wins, so a specific family
    (``qwen3``) should list what a generic one (``llama``) would not.
    ``load_processor(path, trust_remote_code=...)`` loads what the family's templates
    are built on instead of the tokenizer (an ``AutoProcessor`` with a ``tokenizer``
    attribute; None: the tokenizer); ``parts`` names the model's parts (see ``ModelParts``).

    ``options``: a dataclass of the family's own options (``--max-pixels``). Every command
    given a model of the family has them as flags and YAML keys (the family is selected by
    ``--model-family``, else matched from the checkpoint's ``config.json``), a training run
    records them, and ``load_processor`` and ``load_model`` get the values as ``options=``
    (an instance of that dataclass); a family without options is called without it.

    ``processor_kwargs(processor, options) -> dict``: what those options change in the processor
    ``load_processor`` returned, as keyword arguments for a processor another program builds from the
    same checkpoint (vLLM's ``mm_processor_kwargs``), so it processes images the same way; an empty
    dict (or None, the default) where the options change nothing.
    """

    name: str
    description: str
    architectures: Sequence[str] = ()
    model_types: Sequence[str] = ()
    default_template: str = "default"
    lora_target_modules: Sequence[str] = ("all-linear",)
    torch_dtype: str | None = None  # None: the device decides (bf16 where supported)
    attn_implementation: str | None = None  # None: "sdpa"
    load_model: Callable[..., Any] | None = None  # (path, **kw) -> model, kw with trust_remote_code to pass on (and options=, where declared); None: AutoModelForCausalLM
    priority: int = 0  # higher wins when several families match
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)
    load_processor: Callable[..., Any] | None = None  # (path, trust_remote_code=..., options=... where declared) -> processor; None: the tokenizer
    parts: ModelParts | None = None  # None: the whole model is the language model
    processor_kwargs: Callable[..., dict] | None = None  # (processor, options) -> what the options changed, as processor keyword arguments; None: nothing


@dataclass(frozen=True)
class ChatTemplate:
    """Turns a conversation into token ids and a loss mask.

    ``build(processor)`` (the tokenizer, unless the model family loads a processor) returns an object with ``encode(messages, tools=None)
    -> Encoded`` and ``prompt(messages, tools=None) -> list[int]`` (the ids a
    model continues from) and ``stop_token_ids``. A template for a model that calls
    tools may add ``tool_call_start`` and ``parse_tool_calls(text) -> (content,
    calls)`` (see ``tuneforge.templates``).
    """

    name: str
    description: str
    build: Callable[[Any], Any]
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)


@dataclass(frozen=True)
class DatasetFormat:
    """Recognises a dataset row and converts it to the canonical conversation.

    ``detect(row) -> bool``; ``convert(row) -> dict`` with ``messages`` (a list of
    ``{"role", "content"}``) and optionally ``tools``; for preference data the
    dict carries ``prompt``/``chosen``/``rejected`` message lists instead.
    ``kind`` is ``"conversation"`` or ``"preference"``.
    """

    name: str
    description: str
    detect: Callable[[Mapping[str, Any]], bool]
    convert: Callable[[Mapping[str, Any]], dict]
    kind: str = "conversation"
    priority: int = 0  # checked in descending priority when detecting
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)


@dataclass(frozen=True)
class DatasetSource:
    """A dataset known by name: ``resolve(split) -> path`` of a local file.

    ``splits`` names the splits it offers (the first is the training split).
    ``evaluate(rows, answers) -> dict``, where given, scores generated answers
    against the split's rows (used by ``tuneforge eval``); an answer is the generated
    text, or, where the model called tools, the assistant message with its ``tool_calls``.
    An ``evaluate`` that takes a ``template`` keyword is handed the chat template the
    model answered with (its ``parse_tool_calls`` reads calls left in text).
    """

    name: str
    description: str
    resolve: Callable[[str], str]
    splits: Sequence[str] = ("train",)
    evaluate: Callable[[Sequence[Mapping[str, Any]], Sequence[str]], dict] | None = None
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)


@dataclass(frozen=True)
class ModelSource:
    """A model known by name: ``resolve() -> path`` of a local checkpoint dir.

    Resolving may download and convert once into ``TUNEFORGE_HOME``, so a command
    composing its flags never resolves it: ``model_family`` names the family of the
    checkpoint it resolves to (whose options the commands then offer; None: none).
    """

    name: str
    description: str
    resolve: Callable[[], str]
    model_family: str | None = None
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)


@dataclass(frozen=True)
class Tuner:
    """Wraps a model for training and loads what it saved.

    ``prepare(model, config) -> model``; ``load(model, path) -> model`` applies a
    saved result to a base model; ``merge(model) -> model`` folds it in, where the
    tuner saves something separate from the base (an adapter).
    ``check(config, device)`` raises, before any weights are read, where the
    options cannot work (a missing package, a device it cannot run on);
    ``load_kwargs(config, device) -> dict`` adds model-loading arguments (a
    quantization config). ``quantizes_base`` says that the base weights load
    quantized: they cannot move once loaded, so the parallel backend places them
    (``ParallelBackend.load_kwargs``), and a backend that cannot hold a quantized
    base (``supports_quantized_base`` off) refuses the tuner before any weights load.
    ``fuse(model) -> int`` routes the wrapped model's adapter layers through fused
    kernels and returns how many; the core calls it where ``--fused-lora`` is on
    (None: the tuner has nothing to fuse, and the option does nothing).
    """

    name: str
    description: str
    prepare: Callable[[Any, Any], Any]
    saves_adapter: bool = False
    load: Callable[[Any, str], Any] | None = None
    merge: Callable[[Any], Any] | None = None
    check: Callable[[Any, Any], None] | None = None
    load_kwargs: Callable[[Any, Any], dict] | None = None
    quantizes_base: bool = False
    fuse: Callable[[Any], int] | None = None
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)


@dataclass(frozen=True)
class TrainingMethod:
    """A way to train: sft, dpo, ...

    ``options`` is the dataclass of the method's own options (declared once; the
    CLI and YAML are derived from it). ``supports_packing`` says that the method's data
    pipeline packs samples into rows when ``config.packing`` is set: only then does
    the device's packing default apply, and ``--packing`` is refused otherwise.
    ``supports_sequence_parallel``: its trainer cuts packed rows across processes
    (``--sequence-parallel-size``, the core's ``TuneforgeTrainer``); refused otherwise.

    The core's ``tuneforge.training.run.run_training`` runs every method in the same
    order (checks, resolve, data, resumed-data check, policy, trainer, train, output
    dir); a method supplies only what differs, as callables handed a ``RunContext``:
    ``prepare_data(ctx) -> (train, eval or None, DataSummary)`` and
    ``build_trainer(ctx, model, ref_model) -> trainer`` (required), and optionally
    ``check(config)`` (its options, before anything), ``check_setup(ctx)`` (what
    needs the resolved model but no data or weights), ``reference_model(ctx) ->
    (model or None, description)``, ``before_train(ctx, trainer) -> metrics`` and
    ``after_train(ctx, trainer) -> metrics``. ``continues_adapter``: with ``--model``
    an adapter run of the same tuner, that adapter is trained further (instead of
    merged into the base under a new one).

    ``run(config) -> str`` trains and returns the output directory; left out, it is
    ``run_training`` with this record. Give it only as an escape hatch, for a
    method that needs the whole run in its own hands (it then owns every step above).
    """

    name: str
    description: str
    options: type
    run: Optional[Callable[[Any], str]] = None
    supports_packing: bool = False
    supports_sequence_parallel: bool = False
    prepare_data: Optional[Callable[[Any], tuple]] = None
    build_trainer: Optional[Callable[[Any, Any, Any], Any]] = None
    check: Optional[Callable[[Any], None]] = None
    check_setup: Optional[Callable[[Any], None]] = None
    reference_model: Optional[Callable[[Any], tuple]] = None
    before_train: Optional[Callable[[Any, Any], dict]] = None
    after_train: Optional[Callable[[Any, Any], dict]] = None
    continues_adapter: bool = False

    def __post_init__(self) -> None:
        if self.run is None:
            if self.prepare_data is None or self.build_trainer is None:
                raise TypeError(
                    f"Training method '{self.name}' gives neither run nor both prepare_data and build_trainer; "
                    f"give prepare_data and build_trainer (the core runs the rest)."
                )

            def run(config, method=self):
                from .training.run import run_training

                return run_training(config, method)

            object.__setattr__(self, "run", run)


@dataclass(frozen=True)
class ParallelBackend:
    """How a run spreads over processes.

    ``launch_command(nproc) -> list[str] | None`` is the launcher prefix for
    ``nproc`` processes on this machine (None: the backend runs in one process
    only); it takes torchrun's flags, since the core adds ``--nnodes``,
    ``--node-rank``, ``--master-addr`` and ``--master-port`` (in place of
    ``--standalone``) for a run on several machines, and uses it only for a run
    of more than one process that no external launcher started; ``training_args(config) ->
    dict`` adds ``TrainingArguments`` fields (fsdp settings, ...).
    ``shards_parameters`` says that each process holds only a piece of the weights
    outside the forward pass (FSDP, ZeRO-3).
    ``fast_path_off(config) -> {option: why}`` names the fast-path options (``chunked_loss``,
    ``fused_lora``, ``checkpointing_policy`` ...) the backend cannot honour under
    ``config`` (the run's options, the backend's own among them; ``tuneforge plan``
    hands it the backend's options alone), each with a reason a person can read: the
    core turns each one off (a switch left unset becomes false, another option its
    default), refuses one the user asked for before any process is launched, and names
    them in the log and in the run record (``fast_path_off``). None: where
    ``shards_parameters`` is set, the chunked loss (which reads the output layer's
    weight after the forward pass); else nothing.
    ``supports_quantized_base`` says that a tuner training on a quantized base
    (``Tuner.quantizes_base``, such as qlora) can run under this backend; without
    it such a tuner is refused before any weights load. ``load_kwargs(config,
    device) -> dict`` is what ``from_pretrained`` needs to place a quantized base
    under this backend (each process's weights on its own device, for example
    ``device_map={"": LOCAL_RANK}``), since quantized weights cannot move once loaded.
    ``memory_layout(options) -> dict`` tells ``tuneforge plan`` what each process holds
    under the backend's options (its ``options`` dataclass): ``sharded``, the states
    split over the processes (among ``parameters``, ``gradients``, ``optimizer_state``);
    ``float32_weights``, trainable weights (and so their gradients) kept in float32
    under bf16 mixed precision (FSDP2 through accelerate); ``float32_master_weights``, a
    float32 copy of each trainable weight kept with the optimizer state (ZeRO);
    ``offloaded``, states kept in CPU memory (among ``parameters``, ``gradients``,
    ``optimizer_state``).
    None: all three sharded where ``shards_parameters`` is set, else none.
    ``check(config, device)`` raises, before any process is launched or weights are
    read, where the backend cannot run as asked (a missing package, options that do
    not go together). ``resumes_on_other_process_counts``: whether its checkpoints
    resume on a different number of processes (with the same global batch); where not
    (state partitioned for exactly the processes that wrote it, as DeepSpeed ZeRO's),
    such a resume is refused before any weights load. ``min_processes``: the fewest
    processes it runs on (FSDP through accelerate needs two); fewer are refused before
    any weights load.
    """

    name: str
    description: str
    launch_command: Callable[[int], list[str] | None]
    training_args: Callable[[Any], dict] = lambda config: {}
    shards_parameters: bool = False
    supports_quantized_base: bool = False
    load_kwargs: Callable[[Any, Any], dict] = lambda config, device: {}
    memory_layout: Callable[[Any], dict] | None = None
    check: Callable[[Any, Any], None] | None = None
    resumes_on_other_process_counts: bool = True
    min_processes: int = 1
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)
    fast_path_off: Callable[[Any], dict[str, str]] | None = None

    def fast_path_turned_off(self, config) -> dict[str, str]:
        """The fast-path options this backend turns off under ``config``, each with why (``fast_path_off``)."""
        if self.fast_path_off is not None:
            return dict(self.fast_path_off(config))
        if self.shards_parameters:
            return {"chunked_loss": "each process holds only a piece of the output layer's weight after the forward pass, where the chunked loss reads it"}
        return {}


@dataclass(frozen=True)
class FastPath:
    """What a device turns on for the options a user leaves unset.

    ``packing`` packs samples into rows; ``varlen_attention`` lets packed rows use
    the core's variable-length attention kernel (where the family names no
    attention of its own and the kernel is installed); ``chunked_loss`` computes the
    loss in chunks (not under a backend that turns it off: ``ParallelBackend.fast_path_off``); ``fused_kernels``
    turns on the fused LoRA, norm, SwiGLU and rotary kernels; ``gradient_checkpointing``
    recomputes activations in the backward pass.
    """

    packing: bool = False
    varlen_attention: bool = False
    chunked_loss: bool = False
    fused_kernels: bool = False
    gradient_checkpointing: bool = False


@dataclass
class FastPathOptions:
    """The fast-path switches a device offers as options (``--fused-norm``, ``--chunked-loss``, ...).

    The default options of a ``Device``: each one left unset takes the device's
    ``fast_path`` default. A device that offers other switches declares its own
    dataclass (subclass this one to keep these); ``options=None`` offers none.
    """

    fused_norm: Optional[bool] = option(None, "Run the models' Llama-style RMSNorm as one compiled kernel each way (torch.compile); default: the device's (on for CUDA, off elsewhere).", group="training")
    fused_swiglu: Optional[bool] = option(None, "Run the models' SiLU-gated MLP product as one compiled kernel each way (torch.compile); default: the device's (on for CUDA, off elsewhere).", group="training")
    fused_rope: Optional[bool] = option(None, "Apply the models' rotary embeddings as one compiled kernel each way (torch.compile); default: the device's (on for CUDA, off elsewhere).", group="training")
    chunked_loss: Optional[bool] = option(None, "Compute the loss from the last hidden states chunk by chunk, never holding the full logits (same value); default: the device's (on for CUDA, off elsewhere), off under a backend that cannot run it (DeepSpeed ZeRO-3).", group="training")
    loss_chunk_size: int = option(1024, "Tokens per chunk of the chunked loss.", group="training")


@dataclass(frozen=True)
class DeviceKernels:
    """Fused operators a device brings for the fast path, used in place of the core's own.

    Each is optional (None: the core's kernel, where it runs on the device) and computes
    the same values as the formula it replaces: ``rms_norm(hidden, weight, eps)`` the
    Llama-style RMSNorm (``--fused-norm``); ``swiglu(gate, up)`` ``silu(gate) * up``
    (``--fused-swiglu``); ``rotary(q, k, cos, sin, unsqueeze_dim=1) -> (q, k)``
    transformers' ``apply_rotary_pos_emb`` (``--fused-rope``);
    ``varlen_attention(query, key, value, cu_seqlens, max_len, scale, causal)`` attention
    within each sample of a packed row, query ``[total, heads, dim]``, key and value
    ``[total, kv_heads, dim]``, ``cu_seqlens`` int32 sample starts with the total at the
    end, output ``[total, heads, dim]`` (the varlen attention that packed rows use).
    """

    rms_norm: Callable[..., Any] | None = None
    swiglu: Callable[..., Any] | None = None
    rotary: Callable[..., Any] | None = None
    varlen_attention: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Device:
    """A kind of accelerator (or the CPU).

    The core asks the record, never the device's name, for what differs between
    devices: ``is_available() -> bool``; ``torch_device`` is the torch device type
    models and tensors are moved to; ``supports_bf16() -> bool``;
    ``distributed_backend`` is the ``torch.distributed`` backend of a run that
    spans processes; ``peak_memory() -> int`` is the most bytes this process has
    had allocated on the device (0: not measured), logged at the end of a run;
    ``empty_cache()`` hands cached memory back (an engine calls it when it
    closes); ``environment`` holds variables set, unless already set, before the
    first allocation (allocator settings); ``fast_path`` holds the defaults of the
    options a user leaves unset (see ``FastPath``); ``options`` are the switches the
    device offers (``FastPathOptions`` unless it declares its own). ``kernels() ->
    DeviceKernels`` names the device's own fused operators (None: it brings none), asked
    once a run when the fast path uses one, so it may import the device's runtime and
    leave out an operator that runtime lacks. ``prepare_training()`` (None: nothing)
    applies the settings of the device's runtime that training needs, once a run in
    each process, before the weights load. ``unavailable() -> str`` says, in one
    sentence, what is missing and how to install it; a command that asks for the device
    by name while ``is_available()`` is false stops with it before anything loads.
    """

    name: str
    description: str
    torch_device: str
    is_available: Callable[[], bool]
    supports_bf16: Callable[[], bool] = lambda: False
    distributed_backend: str = "gloo"
    peak_memory: Callable[[], int] = lambda: 0
    empty_cache: Callable[[], None] = lambda: None
    environment: Mapping[str, str] = field(default_factory=dict)
    fast_path: FastPath = field(default_factory=FastPath)
    priority: int = 0  # the available device with the highest priority is the default
    options: type | None = FastPathOptions  # the switches it offers; None: none
    kernels: Callable[[], DeviceKernels] | None = None  # its own fused operators; None: none
    prepare_training: Callable[[], None] | None = None  # its runtime's settings for training; None: none
    unavailable: Callable[[], str] | None = None  # why it is not available, and the fix


@dataclass(frozen=True)
class KnownBad:
    """Versions that install together but do not work together, as data.

    ``packages`` maps each distribution to a version range (``{"torch": "<2.3",
    "numpy": ">=2"}``); the combination is bad when every one is installed in its
    range. ``why`` says what fails and ``fix`` is the pip command that fixes it;
    ``tuneforge doctor`` prints both in one sentence.
    """

    packages: Mapping[str, str]
    why: str
    fix: str


@dataclass(frozen=True)
class DoctorChecks:
    """What ``tuneforge doctor`` checks for a plugin beyond its declared requirements.

    ``imports`` maps each heavy module the plugin needs to what to pip install for it
    (``{"vllm": "vllm>=0.10"}``); doctor imports each in a subprocess with a timeout.
    ``known_bad`` lists the plugin's ``KnownBad`` combinations.
    """

    imports: Mapping[str, str] = field(default_factory=dict)
    known_bad: Sequence[KnownBad] = ()


# The command options (infer, eval, deploy) an inference engine may take, passed where the user set them.
COMMON_ENGINE_OPTIONS = ("batch_size", "device", "torch_dtype", "attn_implementation")


@dataclass(frozen=True)
class InferenceEngine:
    """A factory for an object serving the engine protocol (see ``tuneforge.inference``).

    ``create(bundle, **options)``: ``bundle`` is the ``ModelBundle`` the core resolved
    from the model spec (family, template, tokenizer, adapter chain, trust_remote_code);
    ``options`` are, as keyword arguments, every field of the record's ``options``
    dataclass (``--engine NAME --help`` lists them as flags) and those of
    ``common_options`` the user set (the ones that resolve the bundle excepted); any
    other option is refused, naming it, before anything loads.
    """

    name: str
    description: str
    create: Callable[..., Any]
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)
    common_options: Sequence[str] = COMMON_ENGINE_OPTIONS


@dataclass(frozen=True)
class Exporter:
    """Turns a trained output directory into a deployable artifact.

    ``export(bundle, output_dir, options) -> str`` returns the written path; ``bundle``
    is the ``ModelBundle`` of the output directory to export (``bundle.spec`` its path,
    ``bundle.run`` its run record), resolved once by the core. ``options`` holds the
    export's common settings and the values of the record's own ``options`` dataclass;
    ``aliases`` are other names ``--format`` may give it.
    """

    name: str
    description: str
    export: Callable[[Any, str, Mapping[str, Any]], str]
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)
    aliases: Sequence[str] = ()


@dataclass(frozen=True)
class Command:
    """A ``tuneforge`` sub-command built from options.

    ``options`` is its options dataclass: the flags and YAML keys (with those of the
    records it selects, see ``tuneforge.selection``); ``run(config)`` does the work.
    ``description`` is the command's help (its first sentence the one-line summary);
    ``config_file`` says that it takes an optional YAML file as its argument. The core
    builds every such command the same way; ``tuneforge_commands(cli)`` remains for
    arbitrary click commands.
    """

    name: str
    description: str
    options: type
    run: Callable[[Any], Any]
    config_file: bool = True


@dataclass(frozen=True)
class QuickstartTask:
    """A job ``tuneforge quickstart --task NAME`` runs: before, fine-tune, after.

    ``model`` and ``dataset`` are names (or paths) the commands take; ``recipe`` is the
    training options (``tuneforge sft``'s keys) that fit the job; ``eval_splits`` are
    the held-out splits answered before and after, each reported on its own;
    ``max_steps``, ``eval_limit`` and ``max_new_tokens`` are its defaults.
    """

    name: str
    description: str
    model: str
    dataset: str
    recipe: Mapping[str, Any]
    eval_splits: tuple[str, ...] = ("test",)
    max_steps: int = 40
    eval_limit: int = 24
    max_new_tokens: int = 320
    eval_batch_size: int = 8


@dataclass(frozen=True)
class RewardFunction:
    """Scores one sampled completion against its row, for online RL (``tuneforge.rewards``).

    ``score(row, completion) -> float``: ``row`` is the dataset row (its ``tools``, its
    reference answer as the final assistant message, anything else it carries);
    ``completion`` is the generated answer: text, an assistant message (with
    ``tool_calls``) or an engine's ``Completion`` (``tuneforge.toolcalls.read_answer``
    reads all three). A record with ``options`` is called with ``options=`` too (an
    instance of that dataclass). A score that raises or is not a finite number counts
    0 for that sample and is reported; it never stops a run.
    """

    name: str
    description: str
    score: Callable[..., float]
    options: type | None = None  # a dataclass of this record's own options, declared with option(...)


@dataclass(frozen=True)
class RecordKind:
    """One kind of record: adding a kind is one row of ``KINDS`` and one hookspec.

    ``key`` is the registration hook's name without the ``tuneforge_`` prefix (and the
    registry's name for the kind); ``word`` names it in sentences ("Unknown tuner 'x'");
    ``label`` is its name in ``tuneforge list LABEL``.
    """

    key: str
    record: type
    word: str
    label: str


# Every kind of record, in the order ``tuneforge list`` shows them.
KINDS: tuple[RecordKind, ...] = (
    RecordKind("models", ModelSource, "model", "models"),
    RecordKind("model_families", ModelFamily, "model family", "families"),
    RecordKind("chat_templates", ChatTemplate, "chat template", "templates"),
    RecordKind("dataset_formats", DatasetFormat, "dataset format", "formats"),
    RecordKind("datasets", DatasetSource, "dataset", "datasets"),
    RecordKind("tuners", Tuner, "tuner", "tuners"),
    RecordKind("training_methods", TrainingMethod, "training method", "methods"),
    RecordKind("parallel_backends", ParallelBackend, "parallel backend", "backends"),
    RecordKind("devices", Device, "device", "devices"),
    RecordKind("inference_engines", InferenceEngine, "inference engine", "engines"),
    RecordKind("exporters", Exporter, "exporter", "exporters"),
    RecordKind("cli_commands", Command, "command", "commands"),
    RecordKind("quickstart_tasks", QuickstartTask, "quickstart task", "tasks"),
    RecordKind("reward_functions", RewardFunction, "reward function", "rewards"),
)
# Derived from KINDS: kind key -> record type.
RECORD_KINDS: dict[str, type] = {kind.key: kind.record for kind in KINDS}


def iter_records(result: Any) -> Iterable[Any]:
    """Flatten what a hook returned (a record, a list, a generator or None)."""
    if result is None:
        return ()
    if isinstance(result, (list, tuple)):
        return result
    if hasattr(result, "name") and hasattr(result, "description"):
        return (result,)
    return list(result)
