"""The engine protocol, the pt engine and `tuneforge infer`, on real models."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge import hookimpl
from tuneforge.errors import TuneforgeError
from tuneforge.inference import ChatRequest, Completion, Engine, SamplingParams, create_engine
from tuneforge.options import option
from tuneforge.registry import RegistryError
from tuneforge.testing import make_lora_adapter

TUNEFORGE = str(Path(sys.executable).with_name("tuneforge"))
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [
    "hi",
    "Write a long and detailed story about a cat who learns to play the piano in Vienna.",
    "x",
    "What is two plus two? Answer briefly, please.",
    "Name three colours.",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def user(text):
    return [{"role": "user", "content": text}]


def greedy(max_tokens=12, **kw):
    return SamplingParams(max_tokens=max_tokens, **kw)


@pytest.fixture(scope="module")
def tiny(varied_tiny_dir):
    engine = create_engine("pt", varied_tiny_dir, batch_size=3)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def smollm2():
    engine = create_engine("pt", "smollm2-135m-instruct", batch_size=4)
    yield engine
    engine.close()


# -- the protocol -------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("max_tokens", 0, "an integer of at least 1"),
        ("temperature", -0.1, "at least 0"),
        ("top_p", 0.0, r"\(0, 1\]"),
        ("top_p", 1.5, r"\(0, 1\]"),
        ("top_k", -1, "at least 0"),
        ("repetition_penalty", 0, "from 0.01 to 100"),
        ("repetition_penalty", 1e-300, "from 0.01 to 100"),
        ("repetition_penalty", 1e300, "from 0.01 to 100"),
        ("stop", ["ok", ""], "non-empty strings"),
        ("seed", 1.5, "an integer or null"),
        ("n", 0, "at least 1"),
        ("max_tokens", True, "an integer"),
    ],
)
def test_sampling_params_are_checked(field, value, expected):
    with pytest.raises(TuneforgeError, match=rf"Sampling option '{field}' is .*; it must be .*{expected}"):
        SamplingParams(**{field: value})


def test_sampling_params_defaults_and_stop_as_one_string():
    params = SamplingParams(stop="###")
    assert params.stop == ("###",) and params.greedy and params.n == 1


def test_chat_request_needs_messages():
    with pytest.raises(TuneforgeError, match="needs a non-empty list of messages"):
        ChatRequest(messages=[])
    with pytest.raises(TuneforgeError, match="has no 'role'"):
        ChatRequest(messages=[{"content": "hi"}])


def test_unknown_engine_and_unknown_option_are_named_before_loading(varied_tiny_dir):
    with pytest.raises(RegistryError, match="Unknown inference engine 'vllm'; known: pt"):
        create_engine("vllm", varied_tiny_dir)
    with pytest.raises(TuneforgeError, match="Inference engine 'pt' does not take the option 'beam_width'; it takes: batch_size"):
        create_engine("pt", "no-such-model", beam_width=4)


def test_load_options_with_a_loaded_model_are_refused(tiny):
    with pytest.raises(TuneforgeError, match="'device' only applies when the engine loads the model itself"):
        create_engine("pt", tiny.loaded, device="cpu")


def test_engine_serves_the_protocol(tiny):
    assert isinstance(tiny, Engine)


# -- the pt engine on a tiny model --------------------------------------------------


def test_greedy_is_deterministic_and_answers_depend_on_the_prompt(tiny):
    requests = [ChatRequest(user(p), sampling=greedy()) for p in PROMPTS]
    first = tiny.generate(requests)
    second = tiny.generate(requests)
    assert [c[0].token_ids for c in first] == [c[0].token_ids for c in second]
    assert len({c[0].text for c in first}) == len(PROMPTS)


def test_batched_equals_one_at_a_time(tiny):
    requests = [ChatRequest(user(p), sampling=greedy(max_tokens=8 + i)) for i, p in enumerate(PROMPTS)]
    batched = tiny.generate(requests)  # batch_size 3: two left-padded batches, sorted by length
    for request, answers in zip(requests, batched):
        [alone] = tiny.generate([request])[0]
        assert answers[0] == alone
        assert answers[0].prompt_tokens == len(tiny.template.prompt(request.messages))


def test_max_tokens_gives_length(tiny):
    [[answer]] = tiny.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=5))])
    assert answer.finish_reason == "length"
    assert answer.completion_tokens == len(answer.token_ids) == 5
    assert answer.usage == {"prompt_tokens": answer.prompt_tokens, "completion_tokens": 5, "total_tokens": answer.prompt_tokens + 5}


def test_stop_strings_cut_the_text(tiny):
    request = ChatRequest(user(PROMPTS[1]), sampling=greedy(max_tokens=24))
    [[full]] = tiny.generate([request])
    stop = full.text[len(full.text) // 2 :][:4]
    assert stop.strip(), f"pick a visible stop string from {full.text!r}"
    expected = full.text[: full.text.find(stop)]
    stopped_request = ChatRequest(user(PROMPTS[1]), sampling=greedy(max_tokens=24, stop=["never-appears", stop]))
    [[stopped]] = tiny.generate([stopped_request])
    assert stopped.text == expected
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]
    assert len(stopped.token_ids) < len(full.token_ids)
    assert "".join(tiny.stream(stopped_request)) == expected


def test_seeded_sampling_repeats_and_n_gives_n(tiny):
    sampled = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.95, seed=7, n=3)
    request = ChatRequest(user("hi"), sampling=sampled)
    other = ChatRequest(user("x"), sampling=SamplingParams(max_tokens=10, temperature=1.0, seed=8))
    once = tiny.generate([request])[0]
    again = tiny.generate([other, request, request])
    assert len(once) == 3
    assert [c.token_ids for c in again[1]] == [c.token_ids for c in once] == [c.token_ids for c in again[2]]
    assert len({tuple(c.token_ids) for c in once}) > 1, "three samples should not all be equal"
    reseeded = tiny.generate([ChatRequest(user("hi"), sampling=SamplingParams(max_tokens=10, temperature=1.0, top_p=0.95, seed=8, n=3))])[0]
    assert [c.token_ids for c in reseeded] != [c.token_ids for c in once]


def test_greedy_n_gives_n_equal_answers(tiny):
    [answers] = tiny.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=4, n=2))])
    assert len(answers) == 2 and answers[0] == answers[1]


def test_stream_concatenates_to_the_generated_text(tiny):
    for prompt in PROMPTS[:3]:
        request = ChatRequest(user(prompt), sampling=greedy(max_tokens=16))
        [[answer]] = tiny.generate([request])
        stream = tiny.stream(request)
        deltas = []
        while True:
            try:
                deltas.append(next(stream))
            except StopIteration as end:
                final = end.value
                break
        assert "".join(deltas) == answer.text
        assert final == answer
        assert len(deltas) > 1


def test_stream_stopped_early_ends_the_generation(tiny):
    before = tiny.tokens_generated
    stream = tiny.stream(ChatRequest(user(PROMPTS[1]), sampling=greedy(max_tokens=200)))
    next(stream)
    stream.close()
    assert tiny.scheduler.wait_idle(timeout=60)
    assert tiny.tokens_generated - before < 100, "the closed stream's row must stop at the next step"
    [[answer]] = tiny.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=3))])
    assert answer.completion_tokens == 3


def test_stream_refuses_n_above_one(tiny):
    with pytest.raises(TuneforgeError, match="Streaming gives one completion, but the request asks for n=2"):
        next(tiny.stream(ChatRequest(user("hi"), sampling=SamplingParams(n=2, temperature=1.0))))


def test_a_prompt_longer_than_the_context_is_refused(tiny):
    too_long = ChatRequest(user("hello " * 5000), sampling=greedy())
    with pytest.raises(TuneforgeError, match=r"Request 1: the prompt has \d+ tokens, but the model's context is 4096"):
        tiny.generate([ChatRequest(user("hi"), sampling=greedy()), too_long])


# -- SmolLM2: behaviour that needs a real model -----------------------------------------


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2):
    [[answer]] = smollm2.generate([ChatRequest(FRANCE, sampling=greedy(max_tokens=32))])
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"
    assert answer.token_ids[-1] == smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "<|im_end|>" not in answer.text
    assert "".join(smollm2.stream(ChatRequest(FRANCE, sampling=greedy(max_tokens=32)))) == answer.text


@pytest.mark.slow
def test_smollm2_batched_equals_one_at_a_time(smollm2):
    prompts = ("Name a fruit.", "What is 2+2?", "Say hello in French, please.")
    requests = [ChatRequest(user(p), sampling=greedy(max_tokens=8)) for p in prompts]
    batched = smollm2.generate(requests)
    for request, answers in zip(requests, batched):
        assert answers == smollm2.generate([request])[0]


# -- tuneforge infer -----------------------------------------------------------------


def _infer(*args, stdin=None, timeout=300):
    env = dict(os.environ, TUNEFORGE_LOAD_PLUGINS="", OMP_NUM_THREADS="1")
    return subprocess.run([TUNEFORGE, "infer", *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


def test_infer_batch_file(tiny, varied_tiny_dir, tmp_path):
    rows = [
        {"messages": user("hi"), "id": 1},
        {"messages": [*user("x"), {"role": "assistant", "content": "a reference answer"}], "id": 2},
        {"question": "What is two plus two?", "answer": "4", "id": 3},
        {"instruction": "Name three colours.", "input": "", "output": "red", "id": 4},
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = tmp_path / "answers.jsonl"
    result = _infer("--model", varied_tiny_dir, "--input", str(requests), "--output", str(answers), "--max-new-tokens", "6", "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    assert "answering" in result.stderr and f"Wrote 4 answers to {answers}" in result.stderr
    out = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["id"] for r in out] == [1, 2, 3, 4]
    assert out[1]["messages"] == rows[1]["messages"]
    assert out[2]["input_answer"] == "4" and out[2]["question"] == rows[2]["question"]
    prompts = [user("hi"), user("x"), user("What is two plus two?"), user("Name three colours.")]
    expected = tiny.generate([ChatRequest(p, sampling=greedy(max_tokens=6)) for p in prompts])
    for row, [completion] in zip(out, expected):
        assert row["answer"] == completion.text
        assert row["finish_reason"] == completion.finish_reason
        assert row["usage"] == completion.usage


def test_infer_reports_a_bad_row_in_one_line(varied_tiny_dir, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"messages": user("hi")}) + "\n" + json.dumps({"text": "no format"}) + "\n")
    result = _infer("--model", varied_tiny_dir, "--input", str(requests), "--output", str(tmp_path / "a.jsonl"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"{requests} line 2" in result.stderr and "match no dataset format" in result.stderr
    assert not (tmp_path / "a.jsonl").exists()


def test_infer_checks_before_loading(tmp_path):
    from tuneforge.config import InferConfig
    from tuneforge.inference.run import run_infer

    with pytest.raises(TuneforgeError, match="--output 'a.jsonl' needs --input"):
        run_infer(InferConfig(model="no-such-model", output="a.jsonl"))
    with pytest.raises(TuneforgeError, match="does not exist"):
        run_infer(InferConfig(model="no-such-model", input=str(tmp_path / "missing.jsonl")))
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"messages": user("hi")}) + "\n")
    with pytest.raises(TuneforgeError, match="is the --input file"):
        run_infer(InferConfig(model="no-such-model", input=str(requests), output=str(requests)))
    with pytest.raises(TuneforgeError, match=r"--top-p is 0.0; it must be a number in \(0, 1\]"):
        run_infer(InferConfig(model="no-such-model", input=str(requests), top_p=0.0))
    with pytest.raises(TuneforgeError, match="Model 'no-such-model' is not a registered model"):
        run_infer(InferConfig(model="no-such-model", input=str(requests)))


def test_interactive_chat_through_a_pipe(tiny, varied_tiny_dir):
    system = "You are a pirate."
    sampling = greedy(max_tokens=6)
    turn1 = [{"role": "system", "content": system}, *user("Hello, who are you?")]
    [[a1]] = tiny.generate([ChatRequest(turn1, sampling=sampling)])
    turn2 = [*turn1, {"role": "assistant", "content": a1.text}, *user("What do you like to eat?")]
    [[a2]] = tiny.generate([ChatRequest(turn2, sampling=sampling)])
    [[fresh]] = tiny.generate([ChatRequest(user("What do you like to eat?"), sampling=sampling)])
    [[no_system]] = tiny.generate([ChatRequest(user("Hello, who are you?"), sampling=sampling)])
    assert a2.text != fresh.text and a1.text != no_system.text, "history and system prompt must change the answers"

    lines = "Hello, who are you?\n\nWhat do you like to eat?\n/clear\nHello, who are you?\n/exit\nNever answered\n"
    result = _infer("--model", varied_tiny_dir, "--system", system, "--max-new-tokens", "6", stdin=lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{a1.text}\n{a2.text}\n{a1.text}\n"
    assert "/clear starts a new conversation, /exit quits" in result.stderr
    assert "(new conversation)" in result.stderr


def test_system_prompt_applies_to_rows_without_one(tiny, varied_tiny_dir, tmp_path):
    from tuneforge.config import InferConfig
    from tuneforge.inference.run import run_infer

    own = {"role": "system", "content": "You are a poet."}
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"messages": user("hi")}) + "\n" + json.dumps({"messages": [own, *user("hi")]}) + "\n")
    answers = tmp_path / "a.jsonl"
    run_infer(InferConfig(model=varied_tiny_dir, input=str(requests), output=str(answers), system="Be brief.", max_new_tokens=6))
    out = [json.loads(line)["answer"] for line in answers.read_text().splitlines()]
    expected = tiny.generate([
        ChatRequest([{"role": "system", "content": "Be brief."}, *user("hi")], sampling=greedy(max_tokens=6)),
        ChatRequest([own, *user("hi")], sampling=greedy(max_tokens=6)),
    ])
    assert out == [c[0].text for c in expected]
    assert out[0] != tiny.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=6))])[0][0].text


class EchoEngine:
    """The example engine of docs/inference.md."""

    def __init__(self, bundle, *, uppercase: bool = False):
        self.bundle = bundle  # the model spec, resolved once by the core
        self.uppercase = uppercase

    def _answer(self, request):
        text = request.messages[-1]["content"][: request.sampling.max_tokens]
        text = text.upper() if self.uppercase else text
        return Completion(text=text, token_ids=[], finish_reason="stop", prompt_tokens=0, completion_tokens=0)

    def generate(self, requests):
        return [[self._answer(r)] * r.sampling.n for r in requests]

    def stream(self, request):
        completion = self._answer(request)
        yield completion.text
        return completion

    def close(self):
        pass


@dataclasses.dataclass
class EchoOptions:
    uppercase: bool = option(False, "Answer in capitals.")


class EchoPlugin:
    @hookimpl
    def tuneforge_inference_engines(self):
        from tuneforge.records import InferenceEngine

        yield InferenceEngine(name="echo", description="Echoes the last message", create=EchoEngine, options=EchoOptions, common_options=())


@pytest.fixture
def echo_engine_installed():
    from tuneforge.plugins import PluginManager, reset_plugin_manager

    manager = PluginManager()
    manager.load_builtins()
    manager.register_plugin(EchoPlugin(), "echo", "tuneforge-echo", "1.0")
    reset_plugin_manager(manager)
    yield
    reset_plugin_manager(None)


def test_a_plugin_engine_gets_only_the_options_it_takes(echo_engine_installed, varied_tiny_dir, tmp_path, capsys):
    from tuneforge.config import InferConfig
    from tuneforge.inference.run import run_infer

    engine = create_engine("echo", varied_tiny_dir, uppercase=True)
    assert isinstance(engine, Engine)
    assert engine.generate([ChatRequest(user("hi"), sampling=SamplingParams(n=2))]) == [[Completion("HI", [], "stop", 0, 0)] * 2]
    with pytest.raises(TuneforgeError, match="Inference engine 'echo' does not take the option 'batch_size'; it takes: uppercase"):
        create_engine("echo", varied_tiny_dir, batch_size=4)

    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"messages": user("hello there")}) + "\n")
    run_infer(InferConfig(model=varied_tiny_dir, engine="echo", input=str(requests)))  # defaults are not passed on
    assert json.loads(capsys.readouterr().out)["answer"] == "hello there"
    with pytest.raises(TuneforgeError, match="does not take the option 'batch_size'"):
        run_infer(InferConfig(model=varied_tiny_dir, engine="echo", input=str(requests), batch_size=2))


def test_a_plugin_engine_receives_the_model_bundle(echo_engine_installed, varied_tiny_dir, tmp_path):
    from tuneforge.modeling import ModelBundle

    run_dir = make_lora_adapter(varied_tiny_dir, tmp_path / "run", seed=1, run_record=True)
    # chatml has no default system prompt, SmolLM2's template has one: refused before the engine exists, unless allowed.
    with pytest.raises(TuneforgeError, match="lay out conversations differently"):
        create_engine("echo", str(run_dir), template="chatml")
    engine = create_engine("echo", str(run_dir), template="chatml", allow_template_drift=True)
    bundle = engine.bundle
    assert bundle.template_parity["allowed"] and bundle.template_parity["differences"] > 0
    assert isinstance(bundle, ModelBundle)
    assert bundle.spec == str(run_dir) and bundle.base_path == varied_tiny_dir and bundle.run.tuner == "lora"
    assert bundle.adapters == (str(run_dir),) and bundle.base_adapters == ()
    assert bundle.family.name == "llama" and bundle.template_name == "chatml"  # --template wins over the run's
    assert bundle.tokenizer.eos_token is not None and bundle.trust_remote_code is False
    assert create_engine("echo", bundle).bundle is bundle  # a bundle is handed on as it is, not resolved again
    with pytest.raises(TuneforgeError, match="Option 'template' resolves a model spec, and this model was given already resolved"):
        create_engine("echo", bundle, template="default")
    with pytest.raises(TuneforgeError, match="not a registered model"):
        create_engine("echo", "no-such-model")  # resolved by the core, before the engine exists


def test_a_lora_output_dir_answers_with_its_adapter(tiny, varied_tiny_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.modeling import Loaded

    base = AutoModelForCausalLM.from_pretrained(varied_tiny_dir, dtype=torch.float32)
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    run_dir = tmp_path / "run"
    adapted.save_pretrained(run_dir)
    tiny.tokenizer.save_pretrained(run_dir)
    (run_dir / "tuneforge_run.json").write_text(json.dumps({
        "method": "sft", "base_model": varied_tiny_dir, "model_family": "llama", "template": "default",
        "tuner": "lora", "saves_adapter": True, "torch_dtype": "float32",
    }))
    requests = [ChatRequest(user(p), sampling=greedy(max_tokens=8)) for p in PROMPTS[:3]]
    by_hand = Loaded(adapted.eval(), tiny.tokenizer, tiny.template, "default", None, None, torch.device("cpu"), None)
    expected = create_engine("pt", by_hand).generate(requests)
    from_dir = create_engine("pt", str(run_dir))
    assert from_dir.loaded.run.tuner == "lora"
    assert from_dir.generate(requests) == expected
    assert expected != tiny.generate(requests)


def test_a_bfloat16_model_with_float32_lora_weights_answers_as_under_the_training_steps_autocast(varied_tiny_dir):
    # A bf16 model in training keeps its LoRA weights in float32 and leaves their inputs to the trainer's autocast
    # (GRPO samples from it through this engine); that autocast belongs to the caller's thread, and the engine runs
    # the model on a worker thread.
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.modeling import Loaded, load_for_inference

    loaded = load_for_inference(varied_tiny_dir, template="chatml", allow_template_drift=True, torch_dtype="bfloat16")
    torch.manual_seed(2)  # adapters whose product, in bf16 or in float32, changes some greedy answers
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.float32}
    adapted = [module for module in model.modules() if getattr(module, "cast_input_dtype_enabled", False)]
    autocast_seen = []  # whether the engine's worker runs the adapters under autocast (a CPU computes either way)
    adapted[0].register_forward_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))

    def cast_inputs(on: bool) -> None:  # off: as the training setup leaves it under bf16 mixed precision
        for module in adapted:
            module.cast_input_dtype_enabled = on

    cast_inputs(False)
    engine = create_engine("pt", Loaded(model, loaded.tokenizer, loaded.template, "chatml", None, None, torch.device("cpu"), None))
    differ = 0
    try:
        for text in PROMPTS[:4]:
            autocast_seen.clear()
            [[answer]] = engine.generate([ChatRequest(user(text), sampling=greedy(max_tokens=12))])
            assert autocast_seen and all(autocast_seen)
            ids = torch.tensor([list(loaded.template.prompt(user(text)))])
            expected = {}
            for dtype in (torch.bfloat16, torch.float32):  # under bf16 autocast; the adapters in float32 (served)
                cast_inputs(dtype is torch.float32)
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is torch.bfloat16), torch.no_grad():
                    output = model.generate(input_ids=ids, max_new_tokens=len(answer.token_ids), do_sample=False,
                                            pad_token_id=loaded.tokenizer.pad_token_id)
                expected[dtype] = output[0, ids.shape[1]:].tolist()
            cast_inputs(False)
            assert list(answer.token_ids) == expected[torch.bfloat16][: len(answer.token_ids)]
            differ += expected[torch.bfloat16] != expected[torch.float32]
        assert differ  # the two ways of computing give other answers here, so the test tells them apart
        autocast_seen.clear()
        cast_inputs(True)  # a served model (its adapters cast their own inputs) runs as it is
        engine.generate([ChatRequest(user(PROMPTS[0]), sampling=greedy(max_tokens=2))])
        assert autocast_seen and not any(autocast_seen)
    finally:
        engine.close()


def test_engine_options_come_from_the_flags():
    from tuneforge.config import InferConfig
    from tuneforge.inference.run import engine_options_from
    from tuneforge.options import OptionError, build

    # The pt record's own option (compile) always reaches its factory; the common ones where set.
    assert engine_options_from(build(InferConfig, {"batch_size": 4, "compile": True})) == {"batch_size": 4, "compile": True}
    # The deprecated --engine-option spelling still works, checked against the engine's options.
    config = build(InferConfig, {"batch_size": 4, "engine_option": ["compile=false", "attn-implementation=sdpa"]})
    assert engine_options_from(config) == {"batch_size": 4, "compile": False, "attn_implementation": "sdpa"}
    with pytest.raises(OptionError, match="'compile' is not NAME=VALUE"):
        build(InferConfig, {"engine_option": ["compile"]})
    with pytest.raises(OptionError, match="sets 'batch_size' a second time"):
        build(InferConfig, {"batch_size": 4, "engine_option": ["batch_size=2"]})
    with pytest.raises(OptionError, match="does not take the option 'warp_speed'"):
        build(InferConfig, {"engine_option": ["warp_speed=9"]})


# -- tool calls ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_engine(tool_calling_tiny_dir):
    engine = create_engine("pt", tool_calling_tiny_dir, template="chatml", batch_size=4, allow_template_drift=True)
    yield engine
    engine.close()


def test_a_tool_call_comes_back_parsed(tool_engine):
    from tuneforge.testing import WEATHER_CALL, WEATHER_TOOLS

    asked = WEATHER_CALL[:1]
    [[called]] = tool_engine.generate([ChatRequest(asked, tools=WEATHER_TOOLS, sampling=greedy(max_tokens=60))])
    assert called.finish_reason == "tool_calls" and called.text == ""
    [call] = called.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Vienna"}
    # Without tools in the request the same answer is plain text: nothing is parsed.
    [[plain]] = tool_engine.generate([ChatRequest(asked, sampling=greedy(max_tokens=60))])
    assert plain.tool_calls is None and plain.finish_reason == "stop"


def test_a_streamed_tool_call_shows_no_markup(tool_engine):
    from tuneforge.testing import WEATHER_CALL, WEATHER_TOOLS
    from tuneforge.testing.engine_conformance import consume

    deltas, final = consume(tool_engine.stream(ChatRequest(WEATHER_CALL[:1], tools=WEATHER_TOOLS, sampling=greedy(max_tokens=60))))
    assert "<tool_call>" not in "".join(deltas) and "".join(deltas).strip() == ""
    assert final.finish_reason == "tool_calls" and final.tool_calls[0]["function"]["name"] == "get_weather"


def test_a_temperature_too_small_to_divide_by_is_greedy(varied_tiny_dir):
    """1e-300 would overflow the logits into NaN probabilities; it means greedy, and answers as greedy does."""
    assert SamplingParams(temperature=1e-300).greedy and SamplingParams(temperature=1e-300).temperature == 0.0
    assert not SamplingParams(temperature=1e-3).greedy
    engine = create_engine("pt", varied_tiny_dir, device="cpu")
    try:
        messages = [{"role": "user", "content": "hello there"}]
        tiny = engine.generate([ChatRequest(messages=messages, sampling=SamplingParams(max_tokens=6, temperature=1e-300, seed=3))])
        greedy = engine.generate([ChatRequest(messages=messages, sampling=SamplingParams(max_tokens=6))])
        assert tiny[0][0].token_ids == greedy[0][0].token_ids
    finally:
        engine.close()


def test_an_answered_row_keeps_the_tool_calls_of_the_answer():
    from tuneforge.inference.run import answered_row

    call = {"id": "call_0", "type": "function", "function": {"name": "mute_microphone", "arguments": {}}}
    row = {"messages": [{"role": "user", "content": "Mute me."}], "tool_calls": ["the row's own field"]}
    called = Completion(text="", token_ids=[1, 2], finish_reason="tool_calls", prompt_tokens=5, completion_tokens=2,
                        tool_calls=[call])
    out = answered_row(row, called)
    # the calls are what a reader of the answers file needs: the text beside them is empty
    assert out["tool_calls"] == [call] and out["answer"] == "" and out["finish_reason"] == "tool_calls"
    assert out["input_tool_calls"] == ["the row's own field"]
    said = Completion(text="Sorry, I can't.", token_ids=[3], finish_reason="stop", prompt_tokens=5, completion_tokens=1)
    assert "tool_calls" not in answered_row({"messages": row["messages"]}, said)


def test_scores_with_nan_are_refused_in_one_sentence_and_a_finished_row_is_not_checked(varied_tiny_dir):
    """A model whose scores turn NaN (half precision gone wrong) stops the batch with an error naming the
    step, the rows and the fix, instead of torch's bare "probability tensor contains inf, nan" (on CUDA a
    device-side assertion that ends the process's GPU work) or, when greedy, an arbitrary token. A row that
    has finished is still drawn from, and its token thrown away: spoilt scores there do not stop the batch."""
    import torch

    engine = create_engine("pt", varied_tiny_dir, device="cpu", batch_size=2)
    spoiled = {}  # forward call (1: the prompt, k: the step choosing answer token k) -> the row whose scores turn NaN

    def spoil(module, args, output):
        spoil.calls += 1
        row = spoiled.get(spoil.calls)
        if row is not None:
            output.logits[row, -1, 7] = float("nan")
        return output

    hook = engine.model.register_forward_hook(spoil)
    requests = [ChatRequest(user("hello there"), sampling=greedy(max_tokens=2)),
                ChatRequest(user("Name three colours, please."), sampling=greedy(max_tokens=6))]
    try:
        for sampling in ({}, {"temperature": 0.9}):  # greedy, then sampled (a seed would run each request alone)
            batch = [dataclasses.replace(r, sampling=dataclasses.replace(r.sampling, **sampling)) for r in requests]
            spoil.calls, spoiled = 0, {3: 1}
            with pytest.raises(TuneforgeError) as error:
                engine.generate(batch)
            message = str(error.value)
            prompt = len(engine._prompt(batch[1]))
            assert message.startswith("The model's scores for answer token 3 hold NaN or infinity in 1 of the batch's 2 rows")
            assert f"rows [1], prompts of [{prompt}] tokens, weights in float32" in message
            assert message.endswith("load the model in float32 (--torch-dtype float32), or check its weights for NaN.")
            # row 0 stops after 2 tokens: its scores at token 4 choose nothing, and the batch answers
            spoil.calls, spoiled = 0, {4: 0}
            short, long = engine.generate(batch)
            assert spoil.calls >= 4 and len(short[0].token_ids) <= 2 and len(long[0].token_ids) >= 4
            spoiled = {}
    finally:
        hook.remove()
        engine.close()
