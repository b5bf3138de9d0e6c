"""The run record: typed, readable both ways (a record written by an earlier tuneforge loads, unknown keys survive)."""

from __future__ import annotations

import json

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.modeling import resolve_model
from tuneforge.runrecord import RUN_RECORD, RunRecord

# What the run record looked like before it was typed: a plain dict, no ``options``.
EARLIER_RECORD = {
    "tuneforge_version": "0.9.0",
    "run_id": "0123abcd",
    "method": "sft",
    "base_model": "/models/base",
    "base_adapters": ["/runs/first"],
    "model_family": "llama",
    "template": "default",
    "tuner": "lora",
    "saves_adapter": True,
    "torch_dtype": "bfloat16",
    "plugins": {"tuneforge": "0.9.0"},
    "libraries": {"torch": "2.5.0"},
    "data": {"fingerprint": "f" * 64, "formats": {"messages": 8}},
    "train_metrics": {"global_step": 3, "train_loss": 1.5},
    "config": {"model": "/runs/first", "lora_rank": 4, "trust_remote_code": True},
    "created": "2026-01-01T00:00:00+0000",
}


def test_a_record_written_by_the_earlier_code_loads(tmp_path):
    (tmp_path / RUN_RECORD).write_text(json.dumps(EARLIER_RECORD))
    run = RunRecord.load(tmp_path)
    assert run.base_model == "/models/base" and run.tuner == "lora" and run.saves_adapter is True
    assert run.base_adapters == ("/runs/first",)
    assert run.adapter_chain(tmp_path) == ["/runs/first", str(tmp_path)]
    assert run.train_metrics["global_step"] == 3 and run.data["formats"] == {"messages": 8}
    assert run.options == {} and run.extra == {} and run.fast_path_off == {}  # a field it lacks takes its default
    assert run.trust_remote_code is True
    assert resolve_model(str(tmp_path)).run == run  # what every command that loads a run reads


def test_an_old_minimal_record_takes_defaults(tmp_path):
    (tmp_path / RUN_RECORD).write_text(json.dumps({"base_model": "/models/base", "tuner": "full"}))
    run = RunRecord.load(tmp_path)
    assert run.run_id is None and run.base_adapters == () and run.saves_adapter is False and run.config == {}


def test_round_trip_keeps_every_field_and_unknown_keys(tmp_path):
    written_by_a_later_version = {**EARLIER_RECORD, "options": {"tuners": {"name": "lora", "options": {"lora_rank": 4}}},
                                  "template_parity": {"template": "chatml", "compared": 12, "differences": 0, "allowed": False},
                                  "fast_path_off": {"chunked_loss": "the backend holds a piece of the output weight"},
                                  "hardware": {"gpus": 8}}
    (tmp_path / RUN_RECORD).write_text(json.dumps(written_by_a_later_version))
    run = RunRecord.load(tmp_path)
    assert run.extra == {"hardware": {"gpus": 8}}
    assert run.options["tuners"]["options"]["lora_rank"] == 4
    assert run.fast_path_off == {"chunked_loss": "the backend holds a piece of the output weight"}
    again = tmp_path / "again"
    again.mkdir()
    run.write(again)
    assert json.loads((again / RUN_RECORD).read_text()) == written_by_a_later_version
    assert RunRecord.load(again) == run
    assert not list(again.glob(".*.tmp"))  # written atomically, nothing left beside it


def test_a_directory_without_a_record(tmp_path):
    assert RunRecord.find(tmp_path) is None
    with pytest.raises(TuneforgeError, match="is not a tuneforge output dir"):
        RunRecord.load(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"tuner": "lora"}'])
def test_a_broken_record_is_named(tmp_path, text):
    (tmp_path / RUN_RECORD).write_text(text)
    with pytest.raises(TuneforgeError, match=RUN_RECORD):
        RunRecord.load(tmp_path)
