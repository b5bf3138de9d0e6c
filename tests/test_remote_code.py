"""No code shipped with a checkpoint runs unless the user passes --trust-remote-code.

transformers, left to decide, asks on standard input whether to run the Python
file a checkpoint names in ``auto_map``, and a piped "y" is an answer. These tests
build a checkpoint whose module writes a marker file when imported, feed every
command "y" on standard input, and check that the marker never appears, that the
refusal is one sentence, and that with the flag the code does run, with a warning.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.testing import remote_code_dir

TUNEFORGE = str(Path(sys.executable).with_name("tuneforge"))
ROOT = Path(__file__).resolve().parents[1]
YES = "y\ny\nyes\n"  # what a careless pipe (or a hostile one) answers to transformers' prompt


@pytest.fixture(scope="module")
def remote(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("remote-code")
    marker = root / "MARKER"
    return remote_code_dir(tiny_llama_dir, root / "checkpoint", marker), marker


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # transformers copies a trusted checkpoint's module into HF_MODULES_CACHE: keep it out of the home dir.
    modules = tmp_path_factory.mktemp("hf-modules")
    return dict(os.environ, TUNEFORGE_LOAD_PLUGINS="", OMP_NUM_THREADS="1", HF_MODULES_CACHE=str(modules))


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{i} plus {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tuneforge(env, *args, timeout=300):
    return subprocess.run(
        [TUNEFORGE, *map(str, args)], input=YES, capture_output=True, text=True, timeout=timeout, env=env
    )


def sft_args(model, data, out):
    return ["sft", "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", 1, "--save-steps", 100,
            "--max-length", 128, "--logging-steps", 1, "--device", "cpu"]


def assert_refused(result, checkpoint: Path, marker: Path, *extra: str):
    """Exit code non-zero, one sentence naming the directory and the flag, no traceback, no code run."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert not marker.exists(), f"the checkpoint's code ran:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    message = errors[0]
    assert f"'{checkpoint}'" in message and "--trust-remote-code" in message, message
    assert message.count(". ") == 0 and message.endswith("."), message  # one sentence
    for text in extra:
        assert text in message, message
    return message


def test_infer_piped_yes_is_refused(remote, env):
    checkpoint, marker = remote
    result = tuneforge(env, "infer", "--model", checkpoint, "--max-new-tokens", 2)  # the chat reads the pipe
    message = assert_refused(result, checkpoint, marker, "marker_code.py", "config.json")
    assert "model_type 'markerlm'" in message


def test_sft_is_refused_before_the_output_dir_is_touched(remote, env, chats, tmp_path):
    checkpoint, marker = remote
    out = tmp_path / "run"
    result = tuneforge(env, *sft_args(checkpoint, chats, out))
    assert_refused(result, checkpoint, marker)
    assert not out.exists()


def test_eval_is_refused(remote, env):
    checkpoint, marker = remote
    result = tuneforge(env, "eval", "--model", checkpoint, "--limit", 1, "--max-new-tokens", 2)
    assert_refused(result, checkpoint, marker)


def test_deploy_is_refused(remote, env):
    checkpoint, marker = remote
    result = tuneforge(env, "deploy", "--model", checkpoint, "--port", 0, timeout=120)
    assert_refused(result, checkpoint, marker)


@pytest.mark.parametrize("role", ["model", "ref_model"])
def test_rlhf_is_refused_for_the_model_and_the_reference(role, remote, env, tiny_llama_dir, tmp_path):
    checkpoint, marker = remote
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "1 plus 1?", "chosen": "2.", "rejected": "3."}) + "\n")
    model, ref = (checkpoint, tiny_llama_dir) if role == "model" else (tiny_llama_dir, checkpoint)
    result = tuneforge(
        dict(env, TUNEFORGE_LOAD_PLUGINS="dpo"), "rlhf", "--method", "dpo", "--model", model, "--ref-model", ref,
        "--dataset", prefs, "--output-dir", tmp_path / "run", "--max-steps", 1, "--device", "cpu",
    )
    assert_refused(result, checkpoint, marker)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def trusted_run(remote, env, chats, tmp_path_factory):
    """A LoRA run on the checkpoint, trained with --trust-remote-code (its code ran)."""
    checkpoint, marker = remote
    out = tmp_path_factory.mktemp("trusted") / "run"
    result = tuneforge(env, *sft_args(checkpoint, chats, out), "--trust-remote-code")
    ran = marker.exists()
    marker.unlink(missing_ok=True)  # the other tests start without it
    return out, result, ran


def test_sft_with_the_flag_runs_the_code_warns_and_records_it(remote, trusted_run):
    checkpoint, _ = remote
    out, result, ran = trusted_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran
    assert f"warning: --trust-remote-code is on: the Python code shipped in '{checkpoint}' (marker_code.py) will run" in result.stderr
    record = json.loads((out / "tuneforge_run.json").read_text())
    assert record["config"]["trust_remote_code"] is True
    assert record["base_model"] == str(checkpoint)


@pytest.mark.parametrize("command", ["infer", "export", "deploy"])
def test_a_run_trained_with_the_flag_needs_it_again(command, remote, trusted_run, env, tmp_path):
    checkpoint, marker = remote
    out, result, _ = trusted_run
    assert result.returncode == 0, result.stderr[-3000:]
    args = {
        "infer": ["infer", "--model", out, "--max-new-tokens", 2],
        "export": ["export", "--model", out, "--merge-lora", "--output-dir", tmp_path / "merged"],
        "deploy": ["deploy", "--model", out, "--port", 0],
    }[command]
    assert_refused(tuneforge(env, *args, timeout=120), checkpoint, marker, "not read from the run record")
    assert not (tmp_path / "merged").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # no staging folder left behind


def test_infer_with_the_flag_runs_the_code(remote, trusted_run, env, tmp_path):
    checkpoint, marker = remote
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    result = tuneforge(env, "infer", "--model", checkpoint, "--input", requests, "--max-new-tokens", 2, "--trust-remote-code")
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        assert marker.exists()
        assert f"'{checkpoint}' (marker_code.py) will run" in result.stderr
        assert "answer" in json.loads(result.stdout.splitlines()[0])
    finally:
        marker.unlink(missing_ok=True)


# -- in process: what decides, without a subprocess ------------------------------------------


def test_a_known_model_type_loads_with_transformers_own_classes(tiny_llama_dir, tmp_path, capsys):
    """auto_map beside a model_type transformers knows: its classes load it, the shipped code stays unread."""
    from tuneforge.modeling import load_for_inference

    marker = tmp_path / "MARKER"
    checkpoint = remote_code_dir(tiny_llama_dir, tmp_path / "llama", marker, model_type="llama")
    tokenizer_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "TokenizersBackend"  # a class transformers has
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    loaded = load_for_inference(str(checkpoint), device="cpu")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()
    assert f"'{checkpoint}' ships its own code (marker_code.py), which does not run" in capsys.readouterr().err


def test_a_tokenizer_that_needs_its_code_is_refused(tiny_llama_dir, tmp_path):
    from tuneforge.modeling import load_tokenizer

    marker = tmp_path / "MARKER"
    checkpoint = remote_code_dir(tiny_llama_dir, tmp_path / "tok", marker, model_type="llama", config_code=False)
    with pytest.raises(TuneforgeError, match=r"named by auto_map in tokenizer_config\.json.*--trust-remote-code"):
        load_tokenizer(str(checkpoint))
    assert not marker.exists()


def test_every_command_has_the_flag_off_by_default():
    import dataclasses

    from tuneforge.config import EvalConfig, ExportConfig, InferConfig, SFTConfig
    from tuneforge.server.config import DeployConfig

    for cls in (SFTConfig, InferConfig, EvalConfig, ExportConfig, DeployConfig):
        field = {f.name: f for f in dataclasses.fields(cls)}["trust_remote_code"]
        assert field.default is False, cls


# -- static: no load can forget to decide ----------------------------------------------------

# Calls that read a checkpoint (or build a model from a config) and can run its code.
LOADERS = {"from_pretrained", "from_config", "LLM", "AsyncEngineArgs", "EngineArgs", "pipeline"}
# Receivers whose from_pretrained runs no checkpoint code, with the reason.
SAFE_RECEIVERS = {
    "PeftModel": "peft reads adapter_config.json and tensor files; it has no remote-code path",
}


def _source_files():
    for top in ("core", "plugins", "contrib"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).parts
            if "tests" in parts or any(part.endswith(".egg-info") for part in parts):
                continue
            yield path


def _name(node) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def test_every_load_in_the_sources_decides_trust_remote_code():
    missing = []
    for path in _source_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or _name(node.func) not in LOADERS:
                continue
            receiver = _name(node.func.value) if isinstance(node.func, ast.Attribute) else None
            if receiver in SAFE_RECEIVERS:
                continue
            if not any(keyword.arg == "trust_remote_code" for keyword in node.keywords):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node.func)}(...)")
    assert not missing, "loads without an explicit trust_remote_code=:\n" + "\n".join(missing)
    assert len(list(_source_files())) > 50  # the scan really looked at the sources


def test_the_refusal_names_a_plugins_conversion_command(tmp_path):
    internlm = pytest.importorskip("tuneforge_internlm.plugin")
    from tuneforge.modeling import load_hf_config
    from tuneforge.testing import plugin_installed

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "internlm2", "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config"},
    }))
    with plugin_installed(internlm, "internlm", "tuneforge-internlm"):
        with pytest.raises(TuneforgeError, match=r"--trust-remote-code.*`tuneforge internlm2-to-llama` converts this one"):
            load_hf_config(str(tmp_path))
