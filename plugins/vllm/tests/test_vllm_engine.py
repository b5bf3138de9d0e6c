"""The vllm engine against the engine conformance kit, on the CPU build of vLLM, and beside the pt engine."""

import threading
import time

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; the README's test command runs these tests in .venv-vllm")

from tuneforge.api import ChatRequest, SamplingParams, TuneforgeError, create_engine
from tuneforge.testing import make_lora_adapter
from tuneforge.testing.engine_conformance import EngineConformance, PROMPTS, greedy, user

OPTIONS = {"max_model_len": 2048, "enforce_eager": True, "enable_lora": True}


class TestVLLMConformance(EngineConformance):
    engine_name = "vllm"
    engine_options = OPTIONS

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, vllm_tiny_dir):
        return vllm_tiny_dir

    def test_answers_as_the_pt_engine_does(self, engine, model):
        """Both engines build the prompt with the same template: the same prompt tokens, and the same model.

        (Their float32 kernels differ in the last bits, so the near-ties of a random
        model's answers are broken differently: 3 of these 6 agreed to the token here.)
        """
        requests = [ChatRequest(user(p), sampling=greedy(max_tokens=10)) for p in PROMPTS]
        pt = create_engine("pt", model, torch_dtype="float32")
        try:
            expected = [a for [a] in pt.generate(requests)]
        finally:
            pt.close()
        answers = [a for [a] in engine.generate(requests)]
        assert [a.prompt_tokens for a in answers] == [a.prompt_tokens for a in expected]
        same = sum(a.token_ids == b.token_ids for a, b in zip(answers, expected))
        assert same >= 2, f"only {same} of {len(PROMPTS)} greedy answers agree with the pt engine's"

    def test_logprobs_come_with_each_token(self, engine):
        # (structured output and logprobs against the model itself: test_vllm_structured.py)
        assert engine.features == {"structured_output", "logprobs", "weight_sync"}
        [[plain]] = engine.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=4))])
        [[answer]] = engine.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=4, logprobs=True, top_logprobs=2))])
        assert plain.logprobs is None and answer.text == plain.text
        assert len(answer.logprobs) == 4 and all(len(entry["top_logprobs"]) == 2 for entry in answer.logprobs)
        assert all(entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][1]["logprob"] for entry in answer.logprobs)

    def test_adapters_are_served_by_name(self, engine, model, tmp_path):
        adapter = make_lora_adapter(model, tmp_path / "lora", seed=1, run_record=False)
        requests = [ChatRequest(user(p), sampling=greedy(max_tokens=8)) for p in PROMPTS[:3]]
        base = [a.text for [a] in engine.generate(requests)]
        engine.load_adapter("styled", str(adapter))
        assert "styled" in engine.adapters
        styled = [a.text for [a] in engine.generate([ChatRequest(r.messages, sampling=r.sampling, adapter="styled") for r in requests])]
        assert styled != base
        assert [a.text for [a] in engine.generate(requests)] == base  # the base is untouched
        with pytest.raises(TuneforgeError, match="already loaded"):
            engine.load_adapter("styled", str(adapter))
        with pytest.raises(TuneforgeError, match="is not a directory"):
            engine.load_adapter("ghost", str(tmp_path / "missing"))


    def test_cancel_aborts_every_request_in_vllm(self, engine):
        """The kit checks that generate() stops waiting; vLLM must also drop the requests, not finish them unread."""
        long = SamplingParams(max_tokens=engine.context_length, fit_context=True)
        requests = [ChatRequest(user(p), sampling=long) for p in PROMPTS[:3]]
        start = time.monotonic()
        full = engine.generate(requests)
        full_s = time.monotonic() - start
        assert min(a.completion_tokens for [a] in full) > 1000  # long answers: there is work to stop
        cancel = threading.Event()
        failed = []

        def ask():
            try:
                engine.generate(requests, cancel=cancel)
            except TuneforgeError as exc:
                failed.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        deadline = time.monotonic() + 60
        while engine._llm.get_num_unfinished_requests() < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine._llm.get_num_unfinished_requests() == len(requests)
        cancel.set()
        cancelled = time.monotonic()
        asking.join(timeout=10)
        assert not asking.is_alive() and "cancelled" in str(failed[0])
        while engine._llm.get_num_unfinished_requests() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine._llm.get_num_unfinished_requests() == 0
        aborted_s = time.monotonic() - cancelled
        assert aborted_s < full_s / 4, f"vLLM dropped the requests {aborted_s:.2f} s after the cancel; answering them took {full_s:.2f} s."


def test_bad_engine_options_are_refused_before_loading(vllm_tiny_dir):
    with pytest.raises(TuneforgeError, match="'max_lora_rank' is 7"):
        create_engine("vllm", vllm_tiny_dir, max_lora_rank=7)
    with pytest.raises(TuneforgeError, match="'gpu_memory_utilization' is 1.5"):
        create_engine("vllm", vllm_tiny_dir, gpu_memory_utilization=1.5)
    with pytest.raises(TuneforgeError, match="does not take the option 'beam_width'"):
        create_engine("vllm", vllm_tiny_dir, beam_width=4)


def test_the_overhead_benchmark_runs_both_paths_on_the_same_work(vllm_tiny_dir, tmp_path):
    from tuneforge_vllm import bench

    output = tmp_path / "bench.json"
    report = bench.main(["--model", vllm_tiny_dir, "--requests", "4", "--max-tokens", "6", "--repeats", "1",
                         "--engine-option", "enforce_eager=true", "--engine-option", "max_model_len=1024", "--output", str(output)])
    assert report["tuneforge"]["tokens"] == report["vllm"]["tokens"] == 4 * 6  # the same greedy work, to the token
    assert report["tuneforge"]["tokens_per_s"] > 0 and report["vllm"]["tokens_per_s"] > 0
    # the overhead is reported; its size is a benchmark figure (docs/performance.md), not asserted on a shared CI machine
    assert isinstance(report["overhead"], float) and report["overhead"] == report["overhead"]
    assert output.is_file()


def test_a_dora_run_is_refused_by_what_its_adapter_is_not_by_the_tuners_name(vllm_tiny_dir, tmp_path):
    """A DoRA adapter is known by peft's own use_dora, whichever tuner (a plugin's, under any name) saved it."""
    import json

    run = make_lora_adapter(vllm_tiny_dir, tmp_path / "run", seed=3, run_record=True)
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    record = json.loads((run / "tuneforge_run.json").read_text())
    (run / "tuneforge_run.json").write_text(json.dumps({**record, "tuner": "acme-decomposed"}))
    with pytest.raises(TuneforgeError, match="holds a DoRA adapter, which vLLM does not serve; merge it first"):
        create_engine("vllm", str(run))


def test_doctor_imports_vllm_and_finds_no_problem():
    import json

    from tuneforge.testing import run_cli

    report = json.loads(run_cli("doctor", "--json").output)
    findings = {f["topic"]: f for f in report["findings"]}
    assert findings["import vllm (vllm)"]["verdict"] == "ok", findings["import vllm (vllm)"]
    assert report["problems"] == 0, [f for f in report["findings"] if f["verdict"] != "ok"]
