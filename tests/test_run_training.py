"""run_training: the core runs every training method in one order; a method supplies only what differs.

A test-only method record gives nothing but its data preparation and its trainer
(a causal-LM loss on fixed sentences, with the core's trainer class) and trains
the tiny model through ``run_training``: the order of the steps, the resumed
run's data check and the output directory are the core's.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from tuneforge import hookimpl
from tuneforge.config import SFTConfig
from tuneforge.errors import TuneforgeError
from tuneforge.options import build
from tuneforge.records import TrainingMethod
from tuneforge.runrecord import RUN_RECORD, RunRecord
from tuneforge.testing import plugin_installed
from tuneforge.training.output import STARTED_RECORD
from tuneforge.training.run import RunContext, run_training

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "rain fell all day long", "she read a short book"]


class SentencesMethod:
    """A plugin registering the ``sentences`` method: data preparation and a trainer, nothing else."""

    def __init__(self, sentences=SENTENCES):
        self.sentences = sentences
        self.events: list[tuple[str, dict]] = []

    def prepare_data(self, ctx: RunContext):
        from tuneforge.data.pipeline import DataSummary

        out = ctx.setup.output_dir
        self.events.append(("prepare_data", {"started": (out / STARTED_RECORD).is_file(), "bundle": ctx.bundle}))
        samples = []
        for text in self.sentences:
            ids = ctx.tokenizer(text)["input_ids"][: ctx.config.max_length]
            samples.append({"input_ids": ids, "labels": list(ids)})
        summary = DataSummary(template=ctx.bundle.template_name, max_length=ctx.config.max_length, truncation="drop")
        summary.fingerprint = hashlib.sha256(json.dumps(self.sentences).encode()).hexdigest()
        return samples, None, summary

    def build_trainer(self, ctx: RunContext, model, ref_model):
        from tuneforge.data.collate import make_collator
        from tuneforge.training.trainer import TuneforgeTrainer

        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        started = json.loads((ctx.setup.output_dir / STARTED_RECORD).read_text())
        self.events.append(("build_trainer", {"trainable": trainable, "ref_model": ref_model, "started_run": started["run_id"]}))
        return TuneforgeTrainer(
            model=model,
            args=ctx.training_arguments(has_eval=False),
            train_dataset=ctx.train_dataset,
            data_collator=make_collator(ctx.tokenizer, packing=False),
            processing_class=ctx.tokenizer,
            run_id=ctx.run_id,
        )

    @hookimpl
    def tuneforge_training_methods(self):
        yield TrainingMethod(
            name="sentences",
            description="Test-only: a language-model loss on a few sentences",
            options=SFTConfig,
            prepare_data=self.prepare_data,
            build_trainer=self.build_trainer,
        )


def _config(model, out, **values):
    return build(SFTConfig, {
        "model": model, "dataset": ["unused.jsonl"], "output_dir": str(out), "max_steps": 2, "save_steps": 1,
        "per_device_batch_size": 2, "logging_steps": 1, "max_length": 32, "train_type": "lora", "device": "cpu",
        **values,
    })


def _train(plugin, config):
    with plugin_installed(plugin, "sentences", "tuneforge-sentences"):
        from tuneforge.registry import get_registry

        method = get_registry().get("training_methods", "sentences")
        return run_training(config, method)


def test_a_method_of_data_and_a_trainer_trains_through_the_core(tiny_llama_dir, tmp_path):
    plugin = SentencesMethod()
    out = tmp_path / "run"
    assert _train(plugin, _config(tiny_llama_dir, out)) == str(out)
    (step, seen), (next_step, built) = plugin.events
    assert (step, next_step) == ("prepare_data", "build_trainer")  # data first, then the weights
    assert seen["started"] is False  # the output dir is claimed only after the data is read
    assert seen["bundle"].base_path == tiny_llama_dir and seen["bundle"].family.name == "llama"
    assert built["trainable"] > 0 and built["ref_model"] is None  # the tuner wrapped the policy; no reference asked for
    run = RunRecord.load(out)
    assert run.method == "sentences" and run.tuner == "lora" and run.saves_adapter and run.base_model == tiny_llama_dir
    assert run.train_metrics["global_step"] == 2 and run.run_id == built["started_run"]
    assert run.data["fingerprint"] == hashlib.sha256(json.dumps(SENTENCES).encode()).hexdigest()
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_a_resumed_run_must_have_its_data(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    _train(SentencesMethod(), _config(tiny_llama_dir, out, max_steps=1))
    (out / RUN_RECORD).unlink()  # as if killed after its checkpoint, before the end
    other = SentencesMethod(SENTENCES[::-1])
    with pytest.raises(TuneforgeError, match="The data differs from the data of the run being resumed"):
        _train(other, _config(tiny_llama_dir, out, max_steps=2, resume=True))
    assert [step for step, _ in other.events] == ["prepare_data"]  # refused before any weights load
    same = SentencesMethod()
    _train(same, _config(tiny_llama_dir, out, max_steps=2, resume=True))
    assert RunRecord.load(out).train_metrics["global_step"] == 2


def test_a_method_without_data_or_trainer_is_refused_when_registered():
    with pytest.raises(TypeError, match="gives neither run nor both prepare_data and build_trainer"):
        TrainingMethod(name="half", description="only data", options=SFTConfig, prepare_data=lambda ctx: None)
    escape = TrainingMethod(name="whole", description="runs itself", options=SFTConfig, run=lambda config: "out")
    assert escape.run(None) == "out"  # the escape hatch: a method that owns its whole run
