"""Every hook is documented with an example and exercised by a test here."""

import ast
import inspect
import textwrap
import types
import typing

import click
import pytest
from click.testing import CliRunner

import tuneforge
from tuneforge import hookspecs
from tuneforge.cli import TuneforgeGroup
from tuneforge.plugins import PluginManager, reset_plugin_manager
from tuneforge.records import (
    RECORD_KINDS,
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
from tuneforge.registry import Registry

SPECS = {
    name: func
    for name, func in vars(hookspecs).items()
    if callable(func) and hasattr(func, f"{hookspecs.PROJECT}_spec")
}


def example_of(spec) -> str:
    doc = inspect.getdoc(spec) or ""
    assert "Example::" in doc, f"{spec.__name__} has no 'Example::' block"
    return textwrap.dedent(doc.split("Example::", 1)[1])


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hookspec_has_a_summary_and_an_example_implementing_it(name):
    spec = SPECS[name]
    summary = (inspect.getdoc(spec) or "").splitlines()[0]
    assert summary.endswith(".") and len(summary) > 20

    tree = ast.parse(example_of(spec))  # the example is valid Python

    impls = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == name]
    assert len(impls) == 1, f"the example of {name} does not define {name}()"
    (impl,) = impls
    assert [ast.unparse(d) for d in impl.decorator_list] == ["tuneforge.hookimpl"]
    assert [a.arg for a in impl.args.args] == list(inspect.signature(spec).parameters)
    kind = name.removeprefix("tuneforge_")
    if kind in RECORD_KINDS:  # a registration hook's example builds its record
        calls = {ast.unparse(node.func) for node in ast.walk(impl) if isinstance(node, ast.Call)}
        assert RECORD_KINDS[kind].__name__ in calls


def test_registration_hooks_are_typed_with_their_record():
    registration = {name for name in SPECS if name not in ("tuneforge_commands", "tuneforge_doctor_checks")}
    assert registration == {f"tuneforge_{kind}" for kind in RECORD_KINDS}
    for kind, record_type in RECORD_KINDS.items():
        returns = typing.get_type_hints(SPECS[f"tuneforge_{kind}"])["return"]
        assert typing.get_origin(returns).__name__ == "Iterable"
        assert typing.get_args(returns) == (record_type,)
        assert inspect.signature(SPECS[f"tuneforge_{kind}"]).parameters == {}


# One real record per registration hook; the test below registers each through a
# plugin and reads it back. A new hook without an entry here fails the coverage test.
EXAMPLE_RECORDS = {
    "model_families": ModelFamily(
        name="example-family", description="Example family",
        architectures=("ExampleForCausalLM",), model_types=("example",), lora_target_modules=("q_proj",),
    ),
    "models": ModelSource(name="example-model", description="Example model", resolve=lambda: "/models/example"),
    "chat_templates": ChatTemplate(name="example-template", description="Example template", build=lambda tok: tok),
    "dataset_formats": DatasetFormat(
        name="example-qa", description="question/answer rows",
        detect=lambda row: {"question", "answer"} <= row.keys(),
        convert=lambda row: {"messages": [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ]},
    ),
    "datasets": DatasetSource(
        name="example-data", description="Example data",
        resolve=lambda split: f"/data/example/{split}.jsonl", splits=("train", "test"),
    ),
    "tuners": Tuner(name="example-tuner", description="Example tuner", prepare=lambda model, config: model),
    "training_methods": TrainingMethod(
        name="example-method", description="Example method", options=dict, run=lambda config: "/out",
    ),
    "parallel_backends": ParallelBackend(
        name="example-backend", description="Example backend", launch_command=lambda n: ["torchrun", f"--nproc-per-node={n}"],
    ),
    "devices": Device(name="example-device", description="Example device", torch_device="cpu", is_available=lambda: True),
    "inference_engines": InferenceEngine(name="example-engine", description="Example engine", create=lambda model, **kw: model),
    "exporters": Exporter(name="example-exporter", description="Example exporter", export=lambda src, dst, opts: dst),
    "cli_commands": Command(name="example-command", description="Example command.", options=dict, run=lambda config: None),
    "quickstart_tasks": QuickstartTask(
        name="example-task", description="Example task.", model="smollm2-135m-instruct", dataset="meeting-minutes",
        recipe={"train_type": "lora"},
    ),
    "reward_functions": RewardFunction(
        name="example-reward", description="Example reward", score=lambda row, completion: float(bool(completion)),
    ),
}


def plugin_for(kind, record):
    """A plugin object implementing one registration hook."""

    @tuneforge.hookimpl(specname=f"tuneforge_{kind}")
    def registration():
        yield record

    return types.SimpleNamespace(registration=registration)


@pytest.mark.parametrize("kind", sorted(EXAMPLE_RECORDS))
def test_registration_hook(kind):
    record = EXAMPLE_RECORDS[kind]
    manager = PluginManager()
    manager.load_builtins()
    manager.register_plugin(plugin_for(kind, record), "example", "example-dist", "1.0")

    registry = Registry(manager)
    assert registry.get(kind, record.name) is record
    assert registry.provider(kind, record.name) == "example"
    assert manager.infos["example"].registers == {kind: [record.name]}

    manager.unregister(name="example")
    assert not Registry(manager).has(kind, record.name)


def test_example_records_are_usable():
    """The callables of the example records above run as their kind promises."""
    fmt = EXAMPLE_RECORDS["dataset_formats"]
    row = {"question": "2+2?", "answer": "4"}
    assert fmt.detect(row) and not fmt.detect({"text": "x"})
    assert fmt.convert(row)["messages"][1] == {"role": "assistant", "content": "4"}
    assert EXAMPLE_RECORDS["datasets"].resolve("test") == "/data/example/test.jsonl"
    assert EXAMPLE_RECORDS["parallel_backends"].launch_command(2) == ["torchrun", "--nproc-per-node=2"]
    assert EXAMPLE_RECORDS["parallel_backends"].training_args(None) == {}
    assert EXAMPLE_RECORDS["reward_functions"].score({}, "an answer") == 1.0


@pytest.fixture
def installed_manager():
    manager = PluginManager()
    manager.load_builtins()
    reset_plugin_manager(manager)
    yield manager
    reset_plugin_manager()


class HelloCommand:
    @tuneforge.hookimpl
    def tuneforge_commands(self, cli):
        @cli.command()
        @click.argument("who")
        def hello(who):
            """Say hello."""
            click.echo(f"hello {who}")


def test_hook_tuneforge_commands(installed_manager):
    installed_manager.register_plugin(HelloCommand(), "hello", "hello-dist", "1.0")
    group = TuneforgeGroup(name="tuneforge")  # the CLI's group class, fresh, so no command leaks

    result = CliRunner().invoke(group, ["hello", "world"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello world\n"
    assert "hello" in CliRunner().invoke(group, ["--help"]).output


class AcmeDoctorChecks:
    @tuneforge.hookimpl
    def tuneforge_doctor_checks(self):
        return DoctorChecks(imports={"acme_runtime": "acme-runtime>=3"})


def test_hook_tuneforge_doctor_checks(installed_manager):
    from tuneforge.doctor import _doctor_checks

    installed_manager.register_plugin(AcmeDoctorChecks(), "acme-checks", "acme-checks-dist", "1.0")
    checks, findings = _doctor_checks(installed_manager)
    assert findings == [] and checks == {"acme-checks": DoctorChecks(imports={"acme_runtime": "acme-runtime>=3"})}


def test_every_hook_is_tested():
    covered = {f"tuneforge_{kind}" for kind in EXAMPLE_RECORDS}
    covered |= {name.removeprefix("test_hook_") for name in globals() if name.startswith("test_hook_tuneforge_")}
    assert covered == set(SPECS)


def test_each_kind_of_the_table_has_a_documented_hookspec_and_the_rest_derives_from_it():
    """Adding a record kind is one row of records.KINDS and one hookspec (with its example)."""
    from tuneforge.cli import LISTABLE
    from tuneforge.records import KINDS
    from tuneforge.registry import _KIND_WORDS

    for kind in KINDS:
        spec = SPECS[f"tuneforge_{kind.key}"]
        assert kind.record.__name__ in example_of(spec)
        assert LISTABLE[kind.label] == kind.key and _KIND_WORDS[kind.key] == kind.word
    assert RECORD_KINDS == {kind.key: kind.record for kind in KINDS}
    assert len(LISTABLE) == len(_KIND_WORDS) == len(KINDS)


def test_the_plugin_manager_and_the_registry_do_not_import_each_other():
    from pathlib import Path

    core = Path(tuneforge.__file__).parent
    for module, other in (("plugins", "registry"), ("registry", "plugins")):
        tree = ast.parse((core / f"{module}.py").read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert other not in imported, f"{module}.py imports {other}; both go through tuneforge.facade"
