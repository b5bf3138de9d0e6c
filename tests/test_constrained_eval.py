"""Answers held to the row's tools or a refusal (``tuneforge eval --constrained``): the grammar, then a taught model.

The grammar (``structured.for_tool_calls``) is walked token by token with SmolLM2's
tokenizer: calls valid against the tools, and refusals, pass; anything else does
not. The model is a tiny one taught to answer a command with a call that breaks
the tools (a tool that does not exist, a string for an integer): unconstrained,
its call is invalid; constrained, the call validates.
"""

import json
import re

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.inference.structured import INSTALL, Grammars, for_tool_calls
from tuneforge.toolcalls import call_problems, read_answer

pytest.importorskip("outlines_core", reason=f"constrained decoding needs outlines-core: {INSTALL}")

TOOLS = [
    {"type": "function", "function": {"name": "mute", "description": "Mute or unmute the microphone.", "parameters": {
        "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "share_screen", "description": "Share a screen.", "parameters": {
        "type": "object", "properties": {"screen": {"type": "integer", "minimum": 1, "maximum": 4}},
        "required": ["screen"], "additionalProperties": False}}},
]


def hermes(*calls):
    return "\n".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls)


@pytest.fixture(scope="module")
def chatml(smollm2_tokenizer):
    from tuneforge.modeling import build_template

    return build_template("chatml", smollm2_tokenizer)


def test_the_grammar_takes_calls_valid_against_the_tools_or_a_refusal(smollm2_tokenizer, chatml):
    from tuneforge.datasets.device_actions import TOOLS as DEVICE_TOOLS

    structured = for_tool_calls(DEVICE_TOOLS, chatml)
    grammars = Grammars(smollm2_tokenizer, chatml.stop_token_ids)

    def takes(text):
        """Whether the grammar lets the answer's tokens through and then end."""
        guide = grammars.guide(structured)
        for token in smollm2_tokenizer.encode(text, add_special_tokens=False):
            if token not in guide.get_tokens() or token in grammars.end_ids:
                return False
            guide.advance(token_id=token, return_tokens=False)
        return any(token in grammars.end_ids for token in guide.get_tokens())

    book = {"room": "Cedar", "day": "tomorrow", "time": "10:00", "duration_minutes": 60}
    assert takes(hermes(("mute_microphone", {}), ("share_screen", {"screen": 2})))  # two calls
    assert takes(hermes(("book_room", book)))
    assert takes("Sorry, I can't order food: none of my tools does that.")
    assert not takes(hermes(("reserve_room", book)))  # no such tool
    assert not takes(hermes(("book_room", {**book, "time": "10am"})))  # off the time pattern
    assert not takes(hermes(("book_room", {**book, "floor": 2})))  # an argument the tool lacks
    assert takes(hermes(("set_volume", {"level": 100}))) and not takes(hermes(("set_volume", {"level": 101})))  # its range
    assert not takes(hermes(("share_screen", {"screen": 22})))
    assert not takes(hermes(("book_room", book))[:-3])  # a call cut short cannot end
    assert not takes("<b>No.</b>") and not takes('{"name": "mute_microphone"}') and not takes(" Sorry.")

    with pytest.raises(TuneforgeError, match="a row has no 'tools'"):
        for_tool_calls([], chatml)

    class ActionMarkup:  # a template whose calls open with a marker of its own, no markup declared
        name, tool_call_start = "actions", "<|action_start|>"

        def parse_tool_calls(self, text):
            return text, []

    with pytest.raises(TuneforgeError, match=r"markup '--constrained' does not know .*'<\|action_start\|>'"):
        for_tool_calls(DEVICE_TOOLS, ActionMarkup())



def test_forced_calls_and_json_schemas_hold_integers_to_their_range_too(smollm2_tokenizer, chatml):
    # outlines-core holds an integer to digits only; every structured output, not only --constrained's, gets its range
    from tuneforge.inference.structured import from_response_format, from_tool_choice

    grammars = Grammars(smollm2_tokenizer, chatml.stop_token_ids)

    def takes(structured, text):
        guide = grammars.guide(structured)
        for token in smollm2_tokenizer.encode(text, add_special_tokens=False):
            if token not in guide.get_tokens() or token in grammars.end_ids:
                return False
            guide.advance(token_id=token, return_tokens=False)
        return chatml.stop_token_ids[0] in guide.get_tokens()  # a whole answer: the grammar lets it stop there

    required = from_tool_choice(TOOLS, "required")
    assert takes(required, json.dumps([{"name": "share_screen", "arguments": {"screen": 4}}]))
    assert not takes(required, json.dumps([{"name": "share_screen", "arguments": {"screen": 22}}]))
    named = from_tool_choice(TOOLS, {"type": "function", "function": {"name": "share_screen"}})
    assert takes(named, json.dumps({"screen": 1})) and not takes(named, json.dumps({"screen": 0}))
    schema = {"type": "object", "properties": {"level": {"type": "integer", "minimum": -5, "maximum": 100}},
              "required": ["level"], "additionalProperties": False}
    response = from_response_format({"type": "json_schema", "json_schema": {"name": "volume", "schema": schema, "strict": True}})
    assert takes(response, json.dumps({"level": -5})) and takes(response, json.dumps({"level": 100}))
    assert not takes(response, json.dumps({"level": 101})) and not takes(response, json.dumps({"level": -6}))


ACTION_TOKENS = ("<|action_start|>", "<|plugin|>", "<|action_end|>", "<|interpreter|>")


class SpecialActions:
    """A template whose calls are written in special tokens, the arguments under "parameters" (InternLM's layout)."""

    name, tool_call_start = "special-actions", "<|action_start|>"
    tool_call_markup = ("<|action_start|><|plugin|>\n", "<|action_end|>", "", "parameters")
    text_special_tokens = ACTION_TOKENS[:3]

    def parse_tool_calls(self, text):
        from tuneforge.templates import parse_json_tool_calls

        return parse_json_tool_calls(text, re.compile(r"<\|action_start\|><\|plugin\|>\s*(.*?)\s*(?:<\|action_end\|>|$)", re.S))


def actions(*calls):
    return "".join(f"<|action_start|><|plugin|>\n{json.dumps({'name': n, 'parameters': a})}<|action_end|>" for n, a in calls)


@pytest.fixture(scope="module")
def action_tokenizer(smollm2_dir):
    """SmolLM2's tokenizer with the action tokens as special tokens (as InternLM's tokenizers have them)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": list(ACTION_TOKENS)})
    return tokenizer


def test_a_markup_of_special_tokens_takes_those_tokens_where_it_puts_them_and_nowhere_else(action_tokenizer):
    from tuneforge.datasets.device_actions import TOOLS as DEVICE_TOOLS
    from tuneforge.inference.structured import guided_regex
    from tuneforge.inference.text import strip_special_tokens

    template = SpecialActions()
    structured = for_tool_calls(DEVICE_TOOLS, template)
    grammars = Grammars(action_tokenizer, [action_tokenizer.convert_tokens_to_ids("<|im_end|>")])
    special = {action_tokenizer.convert_tokens_to_ids(t) for t in ACTION_TOKENS}

    def takes(ids):
        guide = grammars.guide(structured)
        for token in ids:
            if token not in guide.get_tokens() or token in grammars.end_ids:
                return False
            guide.advance(token_id=token, return_tokens=False)
        return any(token in grammars.end_ids for token in guide.get_tokens())

    def ids(text, split=False):
        return action_tokenizer.encode(text, add_special_tokens=False, split_special_tokens=split)

    two = actions(("mute_microphone", {}), ("share_screen", {"screen": 2}))
    assert special & set(ids(two)) and takes(ids(two))  # the action tokens themselves
    assert takes(ids("Sorry, I can't order food: none of my tools does that."))
    assert not takes(ids(two, split=True))  # the same text spelled in ordinary tokens
    assert not takes(ids(two.replace("parameters", "arguments")))  # the key is the template's
    assert not takes(ids(two.replace("<|plugin|>", "<|interpreter|>")))  # a special token the markup does not hold
    assert not takes(ids(actions(("join_meeting", {"meeting": "<|action_end|>"}))))  # nor one inside a string
    assert not takes(ids(actions(("share_screen", {"screen": 22}))))
    assert not takes(ids("Sure." + two))  # text, then calls: the text may not hold the markup
    assert not takes(ids(two)[:-1])  # a call cut short cannot end

    # The answer's text (its other special tokens dropped, the markup's kept) is read back by the template, and validates.
    text = strip_special_tokens(action_tokenizer.decode(ids(two)), action_tokenizer, template.text_special_tokens)
    assert text == two
    read = read_answer(text, template)
    assert [c.name for c in read.calls] == ["mute_microphone", "share_screen"] and call_problems(read, DEVICE_TOOLS) == []
    # guided_regex is the same language over text; given a tokenizer whose special tokens the markup holds, it refuses.
    assert re.fullmatch(guided_regex(structured), text) and not re.fullmatch(guided_regex(structured), "Sure." + text)
    with pytest.raises(TuneforgeError, match=r"markup written in special tokens \(<\|action_end\|>, <\|action_start\|>, <\|plugin\|>\)"):
        guided_regex(structured, action_tokenizer)


def test_a_declared_markup_names_its_arguments_key_or_is_refused(smollm2_tokenizer, chatml):
    from tuneforge.datasets.device_actions import TOOLS as DEVICE_TOOLS
    from tuneforge.inference.structured import guided_regex, tool_call_markup

    class Declared:
        name, tool_call_start = "declared", "<call>"
        tool_call_markup = ("<call>", "</call>", "\n")

        def parse_tool_calls(self, text):
            return text, []

    assert tool_call_markup(Declared()) == ("<call>", "</call>", "\n", "arguments")  # three strings: "arguments"
    assert for_tool_calls(DEVICE_TOOLS, Declared()).markup == ("<call>", "</call>", "\n")
    Declared.tool_call_markup = ("<call>", "</call>")
    with pytest.raises(TuneforgeError, match=r"declares tool_call_markup \('<call>', '</call>'\); give \(open, close, between\)"):
        for_tool_calls(DEVICE_TOOLS, Declared())
    # Hermes markup holds no special token of SmolLM2's: the same regex for vLLM, given the tokenizer or not.
    hermes_held = for_tool_calls(DEVICE_TOOLS, chatml)
    assert guided_regex(hermes_held, smollm2_tokenizer) == guided_regex(hermes_held)


LESSON = [{"role": "user", "content": "Share my second screen."},
          {"role": "assistant", "content": hermes(("share_my_screen", {"screen": "2"}))}]  # no such tool, a string


@pytest.fixture(scope="module")
def taught(tmp_path_factory, tiny_llama_dir):
    from tuneforge.testing import taught_model_dir

    return taught_model_dir(tmp_path_factory.mktemp("taught-invalid-calls"), base_dir=tiny_llama_dir, template="chatml",
                            lessons=[(LESSON, TOOLS)], learning_rate=1e-2)


@pytest.mark.slow(minutes=3)  # teaching the tiny model its call
def test_constrained_answers_are_valid_calls(taught):
    from tuneforge.evaluation import constrained_requests
    from tuneforge.inference import ChatRequest, SamplingParams, create_engine

    engine = create_engine("pt", taught, template="chatml", allow_template_drift=True)
    try:
        [request] = [ChatRequest(messages=LESSON[:1], tools=TOOLS, sampling=SamplingParams(max_tokens=64))]
        [[free]] = engine.generate([request])
        [[held]] = engine.generate(constrained_requests(engine, [request]))
    finally:
        engine.close()
    # Unconstrained, the model writes the call it was taught: it parses, and breaks the tools.
    assert [c["function"]["name"] for c in free.tool_calls] == ["share_my_screen"], free
    assert any("'share_my_screen' is not one of the tools" in p for p in call_problems(read_answer(free), TOOLS))
    # Constrained, every call it writes validates: the tool that exists, an integer. (After the first call the grammar
    # allows the end or another call; a model this small, off the answer it was taught, may write more until max_tokens.)
    if held.finish_reason == "tool_calls":  # it ended: the engine read its calls out of the text
        calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in held.tool_calls]
        assert call_problems(read_answer(held), TOOLS) == [] and not held.text.strip(), held
    else:  # cut at max_tokens: the calls written so far stay in the text
        assert held.finish_reason == "length", held
        assert held.text.startswith("<tool_call>"), held
        calls = [json.loads(block) for block in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", held.text, re.S)]
    assert calls, held
    for call in calls:
        assert call["name"] == "share_screen" and isinstance(call["arguments"]["screen"], int), held


def test_eval_constrained_reports_it_and_refuses_an_engine_without_it(tiny_llama_dir, capsys, tmp_path):
    from tuneforge.config import EvalConfig
    from tuneforge.evaluation import constrained_requests, run_eval
    from tuneforge.inference import ChatRequest

    summary = run_eval(EvalConfig(model=tiny_llama_dir, dataset="device-actions", split="hard", limit=2, max_new_tokens=8, constrained=True))
    assert summary["constrained"] is True and summary["rows"] == 2
    assert "(2 rows, constrained decoding)" in capsys.readouterr().out

    # --tool-choice required: every answer is a JSON list of calls (here cut short at 8 tokens), refusals included
    answers = tmp_path / "required.jsonl"
    summary = run_eval(EvalConfig(model=tiny_llama_dir, dataset="device-actions", split="test", limit=3, max_new_tokens=8,
                                  constrained=True, tool_choice="required", output=str(answers)))
    assert summary["tool_choice"] == "required" and "(3 rows, constrained decoding (tool_choice required))" in capsys.readouterr().out
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == 3 and all(row["answer"].lstrip().startswith("[") for row in rows), rows
    with pytest.raises(TuneforgeError, match="--tool-choice required holds the answers to calls by constrained decoding; add --constrained"):
        run_eval(EvalConfig(model=tiny_llama_dir, dataset="device-actions", split="test", limit=1, tool_choice="required"))

    # --no-parallel-tool-calls: exactly one call, as the server's parallel_tool_calls false; only with required
    single = tmp_path / "single.jsonl"
    summary = run_eval(EvalConfig(model=tiny_llama_dir, dataset="device-actions", split="test", limit=3, max_new_tokens=48,
                                  constrained=True, tool_choice="required", parallel_tool_calls=False, output=str(single)))
    assert summary["parallel_tool_calls"] is False
    assert "(3 rows, constrained decoding (tool_choice required, one call))" in capsys.readouterr().out
    for row in (json.loads(line) for line in single.read_text().splitlines()):
        calls = row.get("tool_calls") or []
        assert len(calls) == 1 if row["finish_reason"] == "tool_calls" else row["answer"].lstrip().startswith("["), row
    with pytest.raises(TuneforgeError, match="--no-parallel-tool-calls holds each answer to one call, which only --tool-choice required"):
        run_eval(EvalConfig(model=tiny_llama_dir, dataset="device-actions", split="test", limit=1, constrained=True,
                            parallel_tool_calls=False))

    class Structured:  # declares structured output: the constraint of each request is what the engine would get
        features = frozenset({"structured_output"})
        template = None

    request = ChatRequest(messages=[{"role": "user", "content": "Mute me."}], tools=TOOLS)
    [one] = constrained_requests(Structured(), [request], "required", parallel=False)
    [many] = constrained_requests(Structured(), [request], "required")
    assert one.sampling.structured.schema["maxItems"] == 1 and "maxItems" not in many.sampling.structured.schema

    class TextOnly:  # an engine that declares no structured output
        features = frozenset()
        template = None

    with pytest.raises(TuneforgeError, match="--constrained needs an engine that enforces structured output"):
        constrained_requests(TextOnly(), [ChatRequest(messages=[{"role": "user", "content": "Mute me."}], tools=TOOLS)])


def test_the_masks_of_states_allowing_many_tokens_are_kept_and_equal_the_worked_out_ones(smollm2_tokenizer, chatml):
    import torch

    from tuneforge.datasets.device_actions import TOOLS as DEVICE_TOOLS
    from tuneforge.inference.structured import GuidedRows, MaskCache

    structured = for_tool_calls(DEVICE_TOOLS, chatml)
    grammars = Grammars(smollm2_tokenizer, chatml.stop_token_ids)
    answers = ["Sorry, I can't order food: none of my tools does that.", hermes(("share_screen", {"screen": 2}))]
    width = len(smollm2_tokenizer)

    def walk(text, masks):
        """The scores GuidedRows leaves at each step of ``text``, with the given cache."""
        ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
        rows = GuidedRows([grammars.guide(structured)], 0, grammars.stop_token_ids, grammars.end_ids, [structured.key], masks)
        seen = []
        for step in range(len(ids) + 1):
            seen.append(torch.isinf(rows(torch.tensor([ids[:step]]), torch.zeros(1, width)))[0])
        return seen

    kept = MaskCache()
    for text in answers:
        fresh = walk(text, MaskCache())  # every mask worked out anew
        first, again = walk(text, kept), walk(text, kept)
        assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(fresh, first, again))
    # Free text allows most of the vocabulary in every step: its masks are taken from the cache.
    assert kept.hits >= len(smollm2_tokenizer.encode(answers[0], add_special_tokens=False))
    assert 0 < len(kept._masks) <= MaskCache.SIZE
    # The answer's text tokens stay allowed, the markup's opening is blocked after text began.
    text_ids = smollm2_tokenizer.encode(answers[0], add_special_tokens=False)
    steps = walk(answers[0], kept)
    assert not any(steps[i][t] for i, t in enumerate(text_ids))
    assert steps[1][smollm2_tokenizer.convert_tokens_to_ids("<")]
