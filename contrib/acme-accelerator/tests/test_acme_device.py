"""The acme device trains the tiny model through `sft --device acme` and serves the run, with no core change."""

import json
import os

import pytest

from tuneforge.api import read_run_record
from tuneforge.testing import registry, run_cli

ROWS = [
    {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]}
    for i in range(8)
]


def _data(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def _sft(tiny_dir, tmp_path, *extra):
    out = tmp_path / "run"
    run_cli("sft", "--model", tiny_dir, "--dataset", _data(tmp_path), "--output-dir", out, "--device", "acme",
            "--max-steps", 2, "--per-device-batch-size", 2, "--save-steps", 100, "--max-length", 128,
            "--lora-rank", 4, "--learning-rate", 1e-2, *extra)
    return out


def test_registers_the_acme_device(manager):
    device = registry(manager).get("devices", "acme")
    assert manager.infos["acme"].registers == {"devices": ["acme"]}
    assert device.torch_device == "cpu" and device.is_available() and not device.supports_bf16()
    assert (device.fast_path.packing, device.fast_path.chunked_loss, device.fast_path.fused_kernels) == (True, True, False)


def test_its_options_are_flags_of_sft_with_the_device(manager):
    shown = run_cli("sft", "--device", "acme", "--help").output
    assert "--acme-memory-pool" in shown and "--fused-norm" in shown  # its own, and the fast-path switches it keeps
    assert "--acme-memory-pool" not in run_cli("sft", "--help").output  # the default device offers no such flag


def test_trains_with_device_acme_and_records_the_device_and_its_options(manager, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("ACME_ALLOCATOR", raising=False)
    out = _sft(tiny_dir, tmp_path, "--acme-memory-pool", "dedicated")

    run = read_run_record(out)
    assert run.train_metrics["global_step"] == 2 and (out / "adapter_model.safetensors").is_file()
    device = run.options["devices"]
    assert device["name"] == "acme"
    assert device["options"]["acme_memory_pool"] == "dedicated"
    assert device["options"]["chunked_loss"] is True  # left unset: acme's fast-path default
    assert run.config["packing"] is True  # acme packs by default; the CPU device does not
    assert os.environ["ACME_ALLOCATOR"] == "expandable"  # set before the first allocation


def test_infer_with_device_acme_sets_its_environment_before_the_weights_load(manager, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("ACME_ALLOCATOR", raising=False)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"messages": [{"role": "user", "content": "What is 3 plus 3?"}]}) + "\n")
    run_cli("infer", "--model", tiny_dir, "--device", "acme", "--input", requests, "--output", tmp_path / "answers.jsonl",
            "--max-new-tokens", 2)
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 1
    assert os.environ["ACME_ALLOCATOR"] == "expandable"  # as sft sets it: infer and deploy load through the same path


def test_a_bad_option_value_is_refused_by_name(manager, tiny_dir, tmp_path):
    result = run_cli("sft", "--model", tiny_dir, "--dataset", _data(tmp_path), "--output-dir", tmp_path / "run",
                     "--device", "acme", "--acme-memory-pool", "huge", ok=False)
    assert result.exit_code != 0
    assert "huge" in result.output and "dedicated" in result.output
    assert not (tmp_path / "run").exists()


def test_serves_the_run_through_the_real_server(manager, tiny_dir, tmp_path, installed_env):
    from openai import OpenAI

    from tuneforge.testing.server import Server

    out = _sft(tiny_dir, tmp_path)
    server = Server(["--model", out, "--device", "acme", "--served-model-name", "acme-run"], tmp_path / "server.log", env=installed_env)
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        assert [model.id for model in client.models.list()] == ["acme-run"]
        answer = client.chat.completions.create(
            model="acme-run", messages=[{"role": "user", "content": "What is 3 plus 3?"}], max_tokens=4, temperature=0
        )
        assert answer.choices[0].message.role == "assistant"
        assert answer.usage.completion_tokens >= 1 and answer.choices[0].finish_reason in ("stop", "length")
    finally:
        server.stop()
