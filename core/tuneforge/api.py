"""The plugin API: everything a tuneforge plugin may import from the core, in one module.

A plugin imports ``tuneforge.api`` (and, in its tests, ``tuneforge.testing``) and
nothing else of tuneforge: every other module of the core is private and may change
in any release. What is listed in ``__all__`` here follows the stability promise in
docs/plugins.md ("The plugin API"): a name is removed, renamed or changes meaning
only after one minor release in which it still works and warns. ``API_VERSION``
counts those changes; a plugin declares the version it was written for in its
entry-point module::

    from tuneforge.api import API_VERSION, hookimpl  # noqa: F401

    TUNEFORGE_API = "1.0"

and a plugin written for a newer API, or for one older than ``OLDEST_API_VERSION``,
is set aside when it loads with one sentence saying what to upgrade.

Nothing heavy is imported here (no torch, no transformers), so a plugin's
entry-point module stays as cheap to import as before.
"""

from __future__ import annotations

# -- Version: what this tuneforge offers, and the oldest declaration it accepts ------
from . import __version__
from .apiversion import API_VERSION, OLDEST_API_VERSION

# -- Hooks: mark the functions of a plugin module that answer tuneforge's hooks -------
from . import hookimpl

# -- Records: what registration hooks return (frozen dataclasses) ---------------------
from .records import (
    ChatTemplate,
    Command,
    DatasetFormat,
    DatasetSource,
    Device,
    DeviceKernels,
    DoctorChecks,
    Exporter,
    FastPath,
    FastPathOptions,
    InferenceEngine,
    KnownBad,
    ModelFamily,
    ModelParts,
    ModelSource,
    ParallelBackend,
    QuickstartTask,
    RewardFunction,
    TrainingMethod,
    Tuner,
)

# -- Launching: the torchrun prefix of the core's backends, for a backend's launch_command
from .builtin.parallel_backends import torchrun_command

# -- Options: a record's own options dataclass, whose fields become flags and YAML keys
from .options import OptionError, option, selected_options

# -- Errors: raise these with one sentence naming the value and the fix ---------------
from .errors import DataError, TuneforgeError

# -- Chat templates: base classes and the tool-call helpers plugins' templates share --
from .templates import (
    CHATML,
    IGNORE_INDEX,
    Encoded,
    HFChatTemplate,
    SegmentTemplate,
    Template,
    TemplateError,
    TurnLayout,
    TurnTemplate,
    concat_extras,
    drops_tools,
    hermes_tool_calls,
    hermes_tools_prompt,
    jinja_string,
    openai_tool_call,
    parse_hermes_tool_calls,
    parse_json_tool_calls,
    save_with_chat_template,
    single_token_id,
    tokenize_spans,
)

# -- Template parity: a template against a checkpoint's own chat template (tuneforge.parity)
from .parity import TemplateDriftError
from .parity import compare as compare_with_chat_template
from .parity import probes as parity_probes

# -- Conversations: the core's check of one chat row (roles, order, tools) ------------
from .data.convert import validate_conversation
from .data.convert import Converted, add_system_prompt, check_message_fields, check_tools
from .data.text import brief, loads_row
from .data.convert import convert_rows
from .data.rows import Row

# -- Bundled data: the core's meeting-minutes set (rows, structure check), to derive sets from
from .datasets.meeting_minutes import check as check_minutes
from .datasets.meeting_minutes.generate import make_meeting
from .datasets.meeting_minutes.structure import render as render_minutes
from .datasets.meeting_minutes.structure import score as score_minutes
from .datasets.device_actions import TOOLS as device_action_tools
from .home import tuneforge_home
from .cache import build_once

# -- Reward functions: the records a run selects as NAME[:WEIGHT], combined; the tool-call scoring they share with eval
from .rewards import Rewards, SampleReward, rewards_from_file
from .rewards import combine as combine_rewards
from .toolcalls import Answer as ToolCallAnswer
from .toolcalls import AnswerText
from .toolcalls import Judgement as ToolCallJudgement
from .toolcalls import judge as judge_tool_calls
from .toolcalls import read_answer as read_tool_call_answer
from .toolcalls import score as score_tool_calls

# -- Training data: the rows every method's data pipeline loads, and its summary ------
from .data.pipeline import DataSummary, load_examples
from .data.tokenize import TRUNCATION_POLICIES, LengthBound, TokenStats

# -- Training runs: the order the core owns, and what a method's callables are handed -
from .config import TrainConfig

# -- Message parts: content as text or OpenAI parts (image_url, input_audio, video_url)
from .messages import (
    PART_TYPES,
    ContentError,
    check_content,
    has_parts,
    images_of,
    load_image,
    refuse_parts,
    text_of,
)

# -- Inference engines: the request and answer types an engine takes and gives --------
from .inference import (
    BUNDLE_OPTIONS,
    ChatRequest,
    Completion,
    ContextLengthError,
    Engine,
    Prompt,
    fitted_max_tokens,
    Reasoning,
    SamplingError,
    SamplingParams,
    create_engine,
    with_logprobs,
)

# -- Engine helpers: prompt ids, stop, reasoning and tool-call handling, special tokens --
from .inference.text import (
    AnswerStream,
    finish_completion,
    first_stop,
    held_back,
    kept_special_tokens,
    prompt_extras,
    prompt_ids,
    reasoning_markers,
    split_reasoning,
    strip_special_tokens,
    tool_call_markers,
    with_tool_calls,
)

# -- Structured output: the constraint a request carries, and the features an engine declares
from .inference.structured import StructuredOutput, check_features, guided_regex

# -- LoRA adapters: read and check an adapter directory before serving it -------------
from .inference.adapters import check_adapter, check_adapter_dir, read_adapter_config

# -- Models: a spec resolved once into a bundle; its family, config, tokenizer, weights
from .modeling import (
    Loaded,
    ModelBundle,
    ResolvedModel,
    build_template,
    check_remote_code,
    load_for_inference,
    load_hf_config,
    load_model,
    load_processor,
    load_tokenizer,
    match_family,
    resolve_bundle,
    resolve_model,
    template_name_for,
)

# -- Run records: what a finished run leaves in its output directory ------------------
from .runrecord import RUN_RECORD, RunRecord
from .modeling import read_run_record

# -- Export: the core's merge, which an exporter of quantized weights starts from -----
from .export import EXPORT_RECORD, merge_lora

__all__ = [
    # version
    "API_VERSION",
    "OLDEST_API_VERSION",
    "__version__",
    # hooks
    "hookimpl",
    # records
    "ChatTemplate",
    "Command",
    "DatasetFormat",
    "DatasetSource",
    "Device",
    "DeviceKernels",
    "DoctorChecks",
    "Exporter",
    "FastPath",
    "FastPathOptions",
    "InferenceEngine",
    "KnownBad",
    "ModelFamily",
    "ModelParts",
    "ModelSource",
    "ParallelBackend",
    "QuickstartTask",
    "RewardFunction",
    "TrainingMethod",
    "Tuner",
    # launching
    "torchrun_command",
    # options
    "OptionError",
    "option",
    "selected_options",
    # errors
    "DataError",
    "TuneforgeError",
    # chat templates
    "CHATML",
    "IGNORE_INDEX",
    "Encoded",
    "HFChatTemplate",
    "SegmentTemplate",
    "Template",
    "TemplateError",
    "TemplateDriftError",
    "compare_with_chat_template",
    "parity_probes",
    "TurnLayout",
    "TurnTemplate",
    "concat_extras",
    "drops_tools",
    "hermes_tool_calls",
    "hermes_tools_prompt",
    "jinja_string",
    "openai_tool_call",
    "parse_hermes_tool_calls",
    "parse_json_tool_calls",
    "save_with_chat_template",
    "single_token_id",
    "tokenize_spans",
    # conversations
    "validate_conversation",
    "Converted",
    "add_system_prompt",
    "check_message_fields",
    "check_tools",
    "brief",
    "loads_row",
    "convert_rows",
    "Row",
    # bundled data
    "check_minutes",
    "make_meeting",
    "render_minutes",
    "score_minutes",
    "device_action_tools",
    "tuneforge_home",
    "build_once",
    # reward functions and tool-call scoring: one sample, or a dataset's answers
    "Rewards",
    "SampleReward",
    "combine_rewards",
    "rewards_from_file",
    "ToolCallAnswer",
    "AnswerText",
    "ToolCallJudgement",
    "judge_tool_calls",
    "read_tool_call_answer",
    "score_tool_calls",
    # training data
    "DataSummary",
    "load_examples",
    "TRUNCATION_POLICIES",
    "LengthBound",
    "TokenStats",
    # training runs
    "TrainConfig",
    "RunContext",
    "run_training",
    "TuneforgeTrainer",
    "use_varlen_vision_attention",
    # benchmarks
    "BenchmarkMeter",
    "sft_benchmark_run",
    # message parts
    "PART_TYPES",
    "ContentError",
    "check_content",
    "has_parts",
    "images_of",
    "load_image",
    "refuse_parts",
    "text_of",
    # inference engines
    "BUNDLE_OPTIONS",
    "ChatRequest",
    "Completion",
    "ContextLengthError",
    "Engine",
    "Prompt",
    "fitted_max_tokens",
    "Reasoning",
    "SamplingError",
    "SamplingParams",
    "create_engine",
    "StructuredOutput",
    "check_features",
    "guided_regex",
    "with_logprobs",
    # engine helpers
    "AnswerStream",
    "finish_completion",
    "first_stop",
    "held_back",
    "kept_special_tokens",
    "prompt_extras",
    "prompt_ids",
    "reasoning_markers",
    "split_reasoning",
    "strip_special_tokens",
    "tool_call_markers",
    "with_tool_calls",
    # adapters
    "check_adapter",
    "check_adapter_dir",
    "read_adapter_config",
    # models
    "Loaded",
    "ModelBundle",
    "ResolvedModel",
    "build_template",
    "check_remote_code",
    "load_for_inference",
    "load_hf_config",
    "load_model",
    "load_processor",
    "load_tokenizer",
    "match_family",
    "resolve_bundle",
    "resolve_model",
    "template_name_for",
    # run records
    "RUN_RECORD",
    "RunRecord",
    "read_run_record",
    # export
    "EXPORT_RECORD",
    "merge_lora",
]


# Training runs import torch and transformers: these names load on first use, so importing the API stays cheap.
_LAZY = {
    "RunContext": "tuneforge.training.run",
    "run_training": "tuneforge.training.run",
    "TuneforgeTrainer": "tuneforge.training.trainer",
    "use_varlen_vision_attention": ("tuneforge.training.attention", "use_for_vision"),
    "BenchmarkMeter": ("tuneforge.bench.train", "Meter"),
    "sft_benchmark_run": "tuneforge.bench.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name] if isinstance(_LAZY[name], tuple) else (_LAZY[name], name)
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'tuneforge.api' has no attribute {name!r}")
