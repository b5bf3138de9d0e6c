"""The lmdeploy engine against the engine conformance kit on a CUDA GPU, beside the pt engine, with LoRA
adapters by name and a tuneforge LoRA run (plugins/lmdeploy/gpu_check.sh runs these; elsewhere they skip)."""

import threading
import time

import pytest

from tuneforge_lmdeploy.engine import why_not_runnable

pytestmark = pytest.mark.skipif(why_not_runnable() is not None, reason=str(why_not_runnable()))

from tuneforge.api import ChatRequest, SamplingParams, TuneforgeError, create_engine  # noqa: E402
from tuneforge.testing import make_lora_adapter  # noqa: E402
from tuneforge.testing.engine_conformance import EngineConformance, PROMPTS, greedy, user  # noqa: E402

OPTIONS = {"session_len": 2048, "cache_max_entry_count": 0.2, "eager_mode": True}  # eager: a faster start


class TestLMDeployConformance(EngineConformance):
    engine_name = "lmdeploy"
    engine_options = OPTIONS

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, lmdeploy_tiny_dir):
        return lmdeploy_tiny_dir

    def test_answers_as_the_pt_engine_does(self, engine, model):
        """Both engines build the prompt with the same template: the same prompt tokens, and the same model.

        (LMDeploy serves the float32 checkpoint in float16: near-ties of a random model's answers may break
        differently, so only most answers must agree to the token.)
        """
        requests = [ChatRequest(user(p), sampling=greedy(max_tokens=10)) for p in PROMPTS]
        pt = create_engine("pt", model, torch_dtype="float16", device="cuda")
        try:
            expected = [a for [a] in pt.generate(requests)]
        finally:
            pt.close()
        answers = [a for [a] in engine.generate(requests)]
        assert [a.prompt_tokens for a in answers] == [a.prompt_tokens for a in expected]
        same = sum(a.token_ids == b.token_ids for a, b in zip(answers, expected))
        assert same >= 3, f"only {same} of {len(PROMPTS)} greedy answers agree with the pt engine's"

    def test_adapters_are_served_by_name(self, engine, model, tmp_path):
        adapter = make_lora_adapter(model, tmp_path / "lora", seed=1, run_record=False)
        requests = [ChatRequest(user(p), sampling=greedy(max_tokens=8)) for p in PROMPTS[:3]]
        base = [a.text for [a] in engine.generate(requests)]
        engine.load_adapter("styled", str(adapter))
        assert engine.adapters == ["styled"]
        styled = [a.text for [a] in engine.generate([ChatRequest(r.messages, sampling=r.sampling, adapter="styled") for r in requests])]
        assert styled != base
        assert [a.text for [a] in engine.generate(requests)] == base  # the base is untouched
        with pytest.raises(TuneforgeError, match="already loaded"):
            engine.load_adapter("styled", str(adapter))
        with pytest.raises(TuneforgeError, match="is not a directory"):
            engine.load_adapter("ghost", str(tmp_path / "missing"))

    def test_cancel_frees_lmdeploy_at_once(self, engine):
        """The kit checks that generate() stops waiting; LMDeploy must also drop the requests: the next answer comes at once."""
        long = SamplingParams(max_tokens=1500, fit_context=True)
        requests = [ChatRequest(user(p), sampling=long) for p in PROMPTS[:3]]
        start = time.monotonic()
        full = engine.generate(requests)
        full_s = time.monotonic() - start
        assert min(a.completion_tokens for [a] in full) > 1000  # long answers: there is work to stop
        cancel = threading.Event()
        threading.Timer(full_s / 10, cancel.set).start()
        with pytest.raises(TuneforgeError, match="cancelled"):
            engine.generate(requests, cancel=cancel)
        start = time.monotonic()
        [[short]] = engine.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=4))])
        assert short.completion_tokens == 4
        assert time.monotonic() - start < full_s / 3, "the cancelled requests were still running in LMDeploy"


def test_a_lora_run_is_served_with_its_adapter(lmdeploy_tiny_dir, tmp_path):
    run = make_lora_adapter(lmdeploy_tiny_dir, tmp_path / "run", seed=2, run_record=True)
    request = [ChatRequest(user("Tell me about Vienna."), sampling=greedy(max_tokens=8))]
    engine = create_engine("lmdeploy", str(run), **OPTIONS)
    try:
        adapted = engine.generate(request)[0][0].text
        assert engine.adapters == []  # the run's own adapter is not one to name
    finally:
        engine.close()
    base = create_engine("lmdeploy", lmdeploy_tiny_dir, **OPTIONS)
    try:
        assert base.generate(request)[0][0].text != adapted
    finally:
        base.close()


def test_the_decode_benchmark_runs_it_beside_the_pt_engine(tmp_path):
    """``python -m tuneforge.bench.decode --runners pt,lmdeploy``: the same prompt ids through both engines."""
    import json
    import os
    import subprocess
    import sys

    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "tuneforge.bench.decode", "--shape", "qwen2.5-0.5b", "--batch-sizes", "1,4", "--new-tokens", "8",
               "--prompt-tokens", "16", "--repeats", "1", "--no-compile", "--runners", "pt,lmdeploy",
               "--engine-option", "cache_max_entry_count=0.2", "--engine-option", "eager_mode=true", "--work-dir", str(tmp_path / "model"), "--output", str(output)]
    done = subprocess.run(command, env={**os.environ, "TUNEFORGE_LOAD_PLUGINS": "lmdeploy"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())
    for row in report["results"]:
        assert row["lmdeploy"]["tokens"] == row["pt"]["tokens"] == row["batch_size"] * 8  # the model never ends early
        assert row["lmdeploy"]["decode_tokens_per_s"] > 0 and row["lmdeploy"]["speedup_vs_pt"] > 0
