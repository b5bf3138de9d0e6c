"""Helpers for testing tuneforge and its plugins: real tiny models, real tokenizers.

``tiny_model_dir`` writes a random-weight checkpoint of any transformers model type
(a few layers, hidden 64) beside a real tokenizer, so a plugin's tests load, train
and generate with real code in seconds on a CPU. ``plugin_installed`` puts a plugin
on a fresh plugin manager for a test; ``make_lora_adapter`` and
``tool_calling_model_dir`` make adapters and a model that really calls a tool
(``taught_model_dir``: one taught any answers, a thinking model's say);
``remote_code_dir`` makes a checkpoint that ships code (a marker file shows
whether it ran); ``train_and_export`` trains one step per named template and exports each;
``checkpoint_with_chat_template`` copies one with another chat
template (and, to show a command stops before loading them, weights that cannot load); ``engine_conformance``, ``device_conformance``, ``server`` and ``reference`` (modules
beside this one) test engines, devices, the HTTP server and chat templates against official ones. ``run_cli``, ``registry`` and ``sft_config`` reach
the command line, the records and a YAML config the way a user does (``cli_process`` and
``two_processes`` run a command in processes of its own, ``step_losses`` reads a run's losses, and the
pytest fixture ``one_process`` runs the 1-process run they are compared with once per module), so a plugin's
tests need nothing of the core but ``tuneforge.api`` and this package.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"


@contextlib.contextmanager
def plugin_installed(module, name: str, distribution: str, version: str = "test", also=()):
    """A fresh plugin manager with the core's plugins and ``module``, installed process-wide for the block.

    What a plugin's tests use instead of whatever happens to be installed::

        @pytest.fixture
        def manager():
            with plugin_installed(tuneforge_mistral.plugin, "mistral", "tuneforge-mistral") as manager:
                yield manager
    """
    from tuneforge.plugins import PluginManager, reset_plugin_manager

    manager = PluginManager()
    manager.load_builtins()
    manager.register_plugin(module, name, distribution, version)
    for other, other_name, other_distribution in also:  # more plugins beside it: (module, name, distribution)
        manager.register_plugin(other, other_name, other_distribution, version)
    reset_plugin_manager(manager)
    try:
        yield manager
    finally:
        reset_plugin_manager()


def main_with_plugin(module, name: str, distribution: str) -> None:
    """Run ``tuneforge`` on ``sys.argv`` as the command line does (it exits), with ``plugin_installed(module, ...)``.

    For a module a test runs as ``python -m MODULE ARGS...`` (``Server(..., module=MODULE)``):
    a new process whose ``tuneforge`` has the test's plugin in place of the installed ones.
    """
    with plugin_installed(module, name, distribution):
        from tuneforge.cli import main

        main()


def manager_fixture(module, name: str, distribution: str, *, autouse: bool = False, also=()):
    """A pytest fixture named ``manager``: ``plugin_installed(module, ...)`` around each test.

    A plugin's ``conftest.py`` then holds one line::

        manager = manager_fixture(tuneforge_mistral.plugin, "mistral", "tuneforge-mistral")
    """
    import pytest

    def manager():
        with plugin_installed(module, name, distribution, also=also) as installed:
            yield installed

    manager.__doc__ = f"A fresh manager with the core's defaults and the {name} plugin, installed process-wide."
    return pytest.fixture(autouse=autouse, name="manager")(manager)


def one_thread_fixture():
    """An autouse, session-wide pytest fixture putting torch on one thread (small models on shared
    cores run faster so) for the tests under the ``conftest.py`` that holds it::

        one_thread = one_thread_fixture()
    """
    import pytest

    def one_thread():
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    return pytest.fixture(autouse=True, scope="session", name="one_thread")(one_thread)


def smollm2_dir() -> str:
    """The local checkpoint of the real SmolLM2-135M-Instruct (converted once, then cached)."""
    from tuneforge.registry import get_registry

    return get_registry().get("models", SMOLLM2).resolve()


def tiny_model_dir(
    path: str | os.PathLike,
    *,
    model_type: str = "llama",
    tokenizer_dir: str | None = None,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    **config_overrides,
) -> str:
    """Write a random-weight ``model_type`` checkpoint with a real tokenizer to ``path``.

    The tokenizer defaults to SmolLM2's (ChatML template, real BPE vocabulary).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if (path / "config.json").exists():
        return str(path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or smollm2_dir(), trust_remote_code=False)
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    kwargs.update(config_overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
WEATHER_CALL = [
    {"role": "user", "content": "What is the weather in Vienna?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Vienna"}}}]},
]


def tool_calling_model_dir(
    path: str | os.PathLike,
    *,
    base_dir: str,
    template: str,
    conversation: list[dict] = WEATHER_CALL,
    tools: list[dict] = WEATHER_TOOLS,
    max_steps: int = 400,
) -> str:
    """Teach the model at ``base_dir`` to answer ``conversation[:-1]`` with its last turn (a tool call), and save it.

    A tiny random model learns it in a few hundred steps; the result is a real
    model that really emits the call, for tests of tool-call parsing end to end.
    """
    return taught_model_dir(path, base_dir=base_dir, template=template, lessons=[(conversation, tools)], max_steps=max_steps)


def taught_model_dir(
    path: str | os.PathLike,
    *,
    base_dir: str,
    template: str,
    lessons: list[tuple[list[dict], list[dict] | None]],
    max_steps: int = 400,
    learning_rate: float = 3e-3,
) -> str:
    """Teach the model at ``base_dir`` each lesson (a conversation and its tools): to answer it with its last turn.

    The loss is the chat template's own (only the assistant's turns are learned), so
    greedy decoding then writes each last turn, markup included (a ``<think>`` block,
    a tool call), for the prompt of its conversation: a real model whose answers are
    known, for end-to-end tests of how they are read back.
    """
    import inspect

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.templates import IGNORE_INDEX, get_template

    path = Path(path)
    if (path / "config.json").exists():
        return str(path)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False)
    chat_template = get_template(template, tokenizer)
    # Logits only where the next token is learned: the vocabulary's projection of the whole
    # prompt (the tool list) is most of a step's work and none of its loss.
    only_learned = "logits_to_keep" in inspect.signature(model.forward).parameters
    examples = []
    for conversation, tools in lessons:
        encoded = chat_template.encode(conversation, tools=tools)
        labels = torch.tensor(encoded.labels)
        learned = (labels[1:] != IGNORE_INDEX).nonzero()[:, 0]  # positions whose next token is learned
        examples.append((torch.tensor([encoded.input_ids]), labels, learned))

    def lesson_loss(input_ids, labels, learned):
        if not only_learned:
            return model(input_ids=input_ids, labels=labels[None]).loss
        logits = model(input_ids=input_ids, logits_to_keep=learned).logits[0]
        return torch.nn.functional.cross_entropy(logits.float(), labels[learned + 1])

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(max_steps):
        losses = [lesson_loss(*example) for example in examples]
        loss = sum(losses) / len(losses)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if max(item.item() for item in losses) < 0.01:
            break
    else:
        raise RuntimeError(f"The model did not learn its {len(lessons)} answer(s) in {max_steps} steps (loss {loss.item():.3f}).")
    path.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_lora_adapter(base_dir: str, out_dir: str | os.PathLike, *, seed: int, run_record: bool) -> Path:
    """A LoRA adapter with nonzero weights: a tuneforge output dir, or a bare peft adapter dir."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False)
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    out_dir = Path(out_dir)
    adapted.save_pretrained(out_dir)
    if run_record:
        AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False).save_pretrained(out_dir)
        (out_dir / "tuneforge_run.json").write_text(json.dumps({
            "method": "sft", "base_model": str(base_dir), "model_family": "llama", "template": "default",
            "tuner": "lora", "saves_adapter": True, "torch_dtype": "float32",
        }))
    return out_dir


# The module ``remote_code_dir`` ships: importing it is running the checkpoint's code.
_REMOTE_MODULE = '''
with open({marker!r}, "a") as handle:
    handle.write("imported\\n")

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


class MarkerConfig(LlamaConfig):
    model_type = {model_type!r}


class MarkerForCausalLM(LlamaForCausalLM):
    config_class = MarkerConfig


class MarkerTokenizer(PreTrainedTokenizerFast):
    pass
'''


def remote_code_dir(
    base_dir: str, path: str | os.PathLike, marker: str | os.PathLike, *, model_type: str = "markerlm", config_code: bool = True
) -> Path:
    """A copy of the Llama checkpoint ``base_dir`` that ships its own code, ``marker_code.py``.

    Importing that module appends a line to ``marker``: the test of whether a
    checkpoint's code ran. Its tokenizer config (and, with ``config_code``, its
    config) names the module in ``auto_map``; the classes are Llama's under new
    names, so with the code trusted the checkpoint really loads, trains and generates.
    """
    import json
    import shutil

    path = Path(path)
    shutil.copytree(base_dir, path)
    (path / "marker_code.py").write_text(_REMOTE_MODULE.format(marker=str(marker), model_type=model_type))
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = model_type
    if config_code:
        config["architectures"] = ["MarkerForCausalLM"]
        config["auto_map"] = {"AutoConfig": "marker_code.MarkerConfig", "AutoModelForCausalLM": "marker_code.MarkerForCausalLM"}
    (path / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "MarkerTokenizer"
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "marker_code.MarkerTokenizer"]}
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return path


def checkpoint_with_chat_template(
    source: str | os.PathLike, target: str | os.PathLike, chat_template: str | None, *, garbage_weights: bool = False
) -> str:
    """A copy of the checkpoint ``source`` at ``target`` whose tokenizer carries ``chat_template`` (None: none).

    With ``garbage_weights`` its weight files hold bytes no loader reads, so a command that
    stops before loading weights (a template parity check, say) is told from one that loads them.
    """
    import json
    import shutil

    target = Path(target)
    shutil.copytree(source, target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    if chat_template is not None:
        config["chat_template"] = chat_template
    config_path.write_text(json.dumps(config))
    if garbage_weights:
        for weights in target.glob("*.safetensors"):
            weights.write_bytes(b"these are not weights")
    return str(target)


def train_and_export(base: str | os.PathLike, root: str | os.PathLike, templates, row: dict, *extra) -> dict:
    """For each named template: one LoRA step on ``base`` with the dataset row ``row``, then ``export --format merged``.

    Returns ``{template: (run_dir, export_dir)}`` under ``root``; ``extra`` flags go to
    ``sft`` (``--allow-template-drift`` for a base whose own chat template differs).
    """
    import json

    root = Path(root)
    data = root / "rows.jsonl"
    data.write_text(json.dumps(row) + "\n")
    out = {}
    for name in templates:
        run_dir, exported = root / name, root / f"{name}-merged"
        run_cli("sft", "--model", base, "--dataset", data, "--output-dir", run_dir, "--template", name, "--max-steps", 1,
                "--per-device-batch-size", 1, "--save-steps", 100, "--max-length", 64, "--lora-rank", 2, *extra)
        run_cli("export", "--model", run_dir, "--format", "merged", "--output-dir", exported)
        out[name] = run_dir, exported
    return out


def run_cli(*args, ok: bool = True):
    """Run ``tuneforge ARGS...`` in this process and return click's result.

    With ``ok`` (the default) a non-zero exit fails the test with the command's
    output; without it the caller checks ``exit_code`` itself (a refusal). An
    exception that is not a clean exit is not caught, so a traceback shows where it broke.
    """
    from click.testing import CliRunner

    from tuneforge.cli import cli

    result = CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def cli_process(*args, env_extra: dict | None = None):
    """Start ``tuneforge ARGS...`` in a process of its own (a run to kill, or one that launches torchrun).

    Its output (stdout and stderr together) is read from the returned ``Popen``.
    """
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def two_processes(command: str, args, backend: str, *, env_extra: dict | None = None, per_device_batch_size: int = 1) -> str:
    """Run ``tuneforge COMMAND ARGS...`` on 2 processes of ``backend``, one row each per step; return its output.

    With the same rows per step as one process of ``--per-device-batch-size 2``, the two
    runs take the same steps (``step_losses`` compares them; the ``one_process`` fixture
    runs that one once per module). A plugin's command needs its plugin to load in the new
    processes: ``env_extra={"TUNEFORGE_LOAD_PLUGINS": "NAME"}``. ``per_device_batch_size``:
    more rows each (a method that needs several per process).
    """
    process = cli_process(
        command, *args, "--per-device-batch-size", per_device_batch_size, "--parallel-backend", backend, "--nproc-per-node", 2,
        env_extra=env_extra,
    )
    text, _ = process.communicate(timeout=600)
    assert process.returncode == 0, text
    return text


def step_losses(out: str | os.PathLike) -> list[float]:
    """The loss logged at each step of the run in ``out``, from its (only) checkpoint's trainer state."""
    import json

    state = json.loads(next(Path(out).glob("checkpoint-*/trainer_state.json")).read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def registry(manager=None):
    """The records registered through ``manager`` (default: the process-wide plugin manager)."""
    from tuneforge.registry import Registry, get_registry

    return get_registry() if manager is None else Registry(manager)


def sft_config(path: str | os.PathLike):
    """The training config a YAML file gives ``tuneforge sft --config``, checked the same way."""
    from tuneforge import options
    from tuneforge.config import SFTConfig

    return options.build(SFTConfig, options.load_yaml(path))


def engine_options(name: str) -> list[str]:
    """The options inference engine ``name`` takes: its record's ``common_options`` and ``options``."""
    from tuneforge.inference import accepted_options

    return accepted_options(name)


def check_engine_options(name: str, options) -> None:
    """Raise the error a user gets when ``options`` do not fit inference engine ``name``."""
    from tuneforge.inference import check_engine_options as check

    check(name, options)
