"""A failed adapter load leaves nothing behind: the base model answers as before and the name stays free.

Each kind of broken adapter is loaded into a real engine (``create_engine("pt", ...)``)
and through a real server's ``POST /v1/admin/adapters``; the base model's greedy
answers are compared before and after, and a good adapter then loads under the
same name.
"""

import json
import shutil

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.inference import ChatRequest, SamplingParams, create_engine
from tuneforge.testing import make_lora_adapter
from tuneforge.testing.server import Server

PROMPTS = ["hi", "Name three colours.", "What is two plus two?"]
KEY = "adapter-key"


def _config(folder):
    return json.loads((folder / "adapter_config.json").read_text())


def _set_config(folder, **changes):
    config = _config(folder)
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _write_config(folder, value):
    (folder / "adapter_config.json").write_text(json.dumps(value))


def _weights_of_another_shape(folder):
    """lora_A tensors that take 48 inputs, where the served model's layers take 64."""
    import torch
    from safetensors.torch import load_file, save_file

    file = folder / "adapter_model.safetensors"
    weights = load_file(file)
    save_file({k: torch.zeros(v.shape[0], 48) if ".lora_A." in k else v for k, v in weights.items()}, file)


# name -> (how to break a copy of a good adapter, a phrase of the one-sentence error)
BROKEN = {
    "missing-weights": (lambda d: (d / "adapter_model.safetensors").unlink(), "has no weights"),
    "wrong-rank": (lambda d: _set_config(d, r=8), "rank-4 weights"),
    "garbage-weights": (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x00\xffnot tensors" * 100), "cannot be read"),
    "empty-weights": (lambda d: (d / "adapter_model.safetensors").write_bytes(b""), "cannot be read"),
    "config-array": (lambda d: _write_config(d, [1, 2, 3]), "not an object"),
    "config-string": (lambda d: _write_config(d, "LORA"), "not an object"),
    "config-null": (lambda d: _write_config(d, None), "not an object"),
    "config-not-json": (lambda d: (d / "adapter_config.json").write_text("{'r': 4"), "not valid JSON"),
    "rank-string": (lambda d: _set_config(d, r="4"), 'r="4"'),
    "rank-bool": (lambda d: _set_config(d, r=True), "r=true"),
    "rank-zero": (lambda d: _set_config(d, r=0), "r=0"),
    "alpha-string": (lambda d: _set_config(d, lora_alpha="8"), "lora_alpha"),
    "targets-number": (lambda d: _set_config(d, target_modules=5), "target_modules=5"),
    "targets-of-numbers": (lambda d: _set_config(d, target_modules=[1, 2]), "target_modules"),
    "peft-type-number": (lambda d: _set_config(d, peft_type=7), "peft_type 7"),
    "not-lora": (lambda d: _set_config(d, peft_type="IA3"), "peft_type 'IA3'"),
    "missing-targets": (lambda d: _set_config(d, target_modules=["nonexistent_proj"]), "does not have"),
    "other-model-weights": (_weights_of_another_shape, "shape [4, 48]"),
    # Passes every check above, and peft fails half-way through wrapping layers:
    # the q_proj layers it wrapped before reaching the MLP must be taken out again.
    "unwrappable-target": (lambda d: _set_config(d, target_modules=["q_proj", "mlp"]), "does not fit the served model"),
}


@pytest.fixture(scope="module")
def good(varied_tiny_dir, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return make_lora_adapter(varied_tiny_dir, tmp_path_factory.mktemp("good") / "adapter", seed=3, run_record=False)


@pytest.fixture(scope="module")
def broken(good, tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    made = {}
    for kind, (breaks, _) in BROKEN.items():
        made[kind] = root / kind
        shutil.copytree(good, made[kind])
        breaks(made[kind])
    return made


def greedy(engine, adapter=None):
    requests = [ChatRequest(messages=[{"role": "user", "content": p}], adapter=adapter, sampling=SamplingParams(max_tokens=8, temperature=0)) for p in PROMPTS]
    return [completions[0].text for completions in engine.generate(requests)]


def tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


@pytest.fixture(scope="module")
def engine(varied_tiny_dir):
    engine = create_engine("pt", varied_tiny_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(engine, good):
    """The base model's answers, before any adapter was loaded."""
    return greedy(engine)


def test_a_good_adapter_changes_the_answers(engine, good, reference):
    engine.load_adapter("good", str(good))
    assert greedy(engine, "good") != reference
    assert greedy(engine) == reference


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_failed_load_leaves_the_base_model_and_the_name(engine, good, broken, reference, kind):
    layers = tuner_layers(engine.model)
    with pytest.raises(TuneforgeError) as refused:
        engine.load_adapter(kind, str(broken[kind]))
    message = str(refused.value)
    assert BROKEN[kind][1] in message, message
    assert f"'{kind}'" in message and message.count(". ") == 0 and "\n" not in message  # one sentence naming it
    assert kind not in engine.adapters
    assert tuner_layers(engine.model) == layers  # no layer added or left wrapped
    assert greedy(engine) == reference
    engine.load_adapter(kind, str(good))  # the name is free again
    assert greedy(engine, kind) == greedy(engine, "good")
    assert greedy(engine) == reference


def test_a_failed_first_load_unwraps_every_layer(varied_tiny_dir, good, broken):
    """On a model that never had an adapter, peft's half-done injection is taken out completely."""
    engine = create_engine("pt", varied_tiny_dir)
    try:
        before = greedy(engine)
        with pytest.raises(TuneforgeError, match="does not fit the served model"):
            engine.load_adapter("partial", str(broken["unwrappable-target"]))
        assert tuner_layers(engine.model) == []
        assert not getattr(engine.model, "_hf_peft_config_loaded", False)
        assert not getattr(engine.model, "peft_config", None)
        assert greedy(engine) == before
        engine.load_adapter("partial", str(good))
        assert greedy(engine, "partial") != before and greedy(engine) == before
    finally:
        engine.close()


def test_a_failed_load_into_a_lora_run_keeps_its_own_adapter(varied_tiny_dir, good, broken, tmp_path):
    """A served LoRA output dir is a PeftModel whose 'default' adapter must stay as it was."""
    run = make_lora_adapter(varied_tiny_dir, tmp_path / "run", seed=5, run_record=True)
    engine = create_engine("pt", str(run))
    try:
        before = greedy(engine)
        for kind in ("unwrappable-target", "garbage-weights", "wrong-rank"):
            with pytest.raises(TuneforgeError):
                engine.load_adapter("extra", str(broken[kind]))
            assert greedy(engine) == before
        engine.load_adapter("extra", str(good))
        assert greedy(engine, "extra") != before and greedy(engine) == before
    finally:
        engine.close()


# -- through the server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(varied_tiny_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("adapter-server") / "server.log"
    running = Server(["--model", varied_tiny_dir, "--served-model-name", "tiny", "--max-tokens", "16"], log, api_key=KEY)
    yield running
    assert running.stop() == 0, running.tail()


def served_answers(client, model="tiny"):
    return [client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}], max_tokens=8, temperature=0).choices[0].message.content for p in PROMPTS]


@pytest.mark.parametrize("kinds", [["missing-weights", "wrong-rank", "garbage-weights", "config-array", "rank-string", "missing-targets", "unwrappable-target"]])
def test_the_admin_endpoint_refuses_a_broken_adapter_and_changes_nothing(server, good, broken, kinds):
    client = server.client()
    before = served_answers(client)
    for kind in kinds:
        refused = server.post("/v1/admin/adapters", {"name": "late", "path": str(broken[kind])})
        assert refused.status_code == 400, (kind, refused.text)
        error = refused.json()["error"]
        assert error["message"] and "\n" not in error["message"] and "Traceback" not in refused.text
        assert "late" not in [m.id for m in client.models.list().data]
        assert served_answers(client) == before, kind
    added = server.post("/v1/admin/adapters", {"name": "late", "path": str(good)})
    assert added.status_code == 201, added.text
    assert served_answers(client, "late") != before
    assert served_answers(client) == before


def _as_bin(folder, *, garbage=False):
    import torch
    from safetensors.torch import load_file

    weights = folder / "adapter_model.safetensors"
    if garbage:
        (folder / "adapter_model.bin").write_bytes(b"PK\x03\x04 not a checkpoint" * 10)
    else:
        torch.save(load_file(weights), folder / "adapter_model.bin")
    weights.unlink()


def test_pickled_weights_are_checked_the_same_way(engine, good, reference, tmp_path):
    """adapter_model.bin (an older peft's format) is read with weights_only, its shapes checked like safetensors'."""
    fine, damaged = tmp_path / "fine", tmp_path / "damaged"
    shutil.copytree(good, fine)
    shutil.copytree(good, damaged)
    _as_bin(fine)
    _as_bin(damaged, garbage=True)
    with pytest.raises(TuneforgeError, match="adapter_model.bin cannot be read"):
        engine.load_adapter("pickled", str(damaged))
    assert greedy(engine) == reference
    engine.load_adapter("pickled", str(fine))
    assert greedy(engine, "pickled") == greedy(engine, "good")


@pytest.mark.parametrize("kind", ["config-array", "rank-string", "garbage-weights"])
def test_deploy_refuses_a_broken_adapter_before_loading_the_model(broken, kind, tmp_path):
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "deploy", "--model", str(tmp_path / "not-loaded"), "--adapters", f"late={broken[kind]}"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("Error: Adapter 'late'") and BROKEN[kind][1] in line
    assert "Loading" not in done.stderr + done.stdout
