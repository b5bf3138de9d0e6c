"""Constrained decoding in InternLM's markup, whose action tokens are special tokens.

A tiny InternLM3 is taught to answer a command with a call that breaks the tools (a
tool that does not exist, a string for an integer), in InternLM's markup.
``tuneforge eval --constrained`` holds its answers to calls written as
``<|action_start|><|plugin|>\\n{"name", "parameters"}<|action_end|>``, the action
tokens themselves where the markup puts them: the template's own parser reads the
calls back and they validate, where the unconstrained answers do not. A forced
``tool_choice`` (a JSON list of calls, whatever the template) holds it too.
"""

import json

import pytest

from tuneforge.api import DatasetSource, hookimpl, score_tool_calls
from tuneforge.testing import run_cli

pytest.importorskip("outlines_core", reason="constrained decoding needs outlines-core")

TOOLS = [
    {"type": "function", "function": {"name": "mute", "parameters": {
        "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "share_screen", "parameters": {
        "type": "object", "properties": {"screen": {"type": "integer", "minimum": 1, "maximum": 4}},
        "required": ["screen"], "additionalProperties": False}}},
]
COMMANDS = [("Share my second screen.", "share_screen", {"screen": 2}), ("Share screen three.", "share_screen", {"screen": 3}),
            ("Please share my first screen.", "share_screen", {"screen": 1}), ("Mute me.", "mute", {"on": True})]


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


LESSON = [{"role": "user", "content": COMMANDS[0][0]},
          {"role": "assistant", "content": "", "tool_calls": [call("share_my_screen", {"screen": "2"})]}]  # no such tool, a string


@pytest.fixture(scope="module")
def taught(tmp_path_factory, internlm_tokenizer_dir):
    import tuneforge_internlm.plugin
    from tuneforge.testing import plugin_installed
    from tuneforge_internlm.testing import tiny_internlm3_dir

    root = tmp_path_factory.mktemp("internlm-constrained")
    base = tiny_internlm3_dir(root / "base", tokenizer_dir=internlm_tokenizer_dir)
    with plugin_installed(tuneforge_internlm.plugin, "internlm", "tuneforge-internlm"):
        return teach(base, root / "taught", LESSON, TOOLS)


def teach(base, path, conversation, tools, steps=400):
    """``taught_model_dir``'s lesson, the logits worked out only where the answer is learned (four times faster)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.api import IGNORE_INDEX
    from tuneforge.testing import registry

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    encoded = registry().get("chat_templates", "internlm3").build(tokenizer).encode(conversation, tools=tools)
    ids, labels = torch.tensor([encoded.input_ids]), torch.tensor(encoded.labels)
    learned = (labels[1:] != IGNORE_INDEX).nonzero()[:, 0]  # the positions whose next token is learned
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        logits = model(input_ids=ids, logits_to_keep=learned).logits[0]
        loss = torch.nn.functional.cross_entropy(logits, labels[learned + 1])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.01:
            break
    else:
        raise RuntimeError(f"The model did not learn its answer in {steps} steps (loss {loss.item():.3f}).")
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


class ScreenCommands:
    """A plugin with a scorable tool-calling dataset of the commands (one split, 'test')."""

    def __init__(self, path):
        self.path = path

    @hookimpl
    def tuneforge_datasets(self):
        yield DatasetSource(name="screen-commands", description="commands to a meeting app", resolve=lambda split: str(self.path),
                            splits=("test",), evaluate=score_tool_calls)


@pytest.fixture
def commands(tmp_path):
    import tuneforge_internlm.plugin
    from tuneforge.testing import plugin_installed

    path = tmp_path / "commands.jsonl"
    path.write_text("".join(json.dumps({"tools": TOOLS, "messages": [
        {"role": "user", "content": text}, {"role": "assistant", "content": "", "tool_calls": [call(name, arguments)]}]}) + "\n"
        for text, name, arguments in COMMANDS))
    also = [(ScreenCommands(path), "screen-commands", "test-screen-commands")]
    with plugin_installed(tuneforge_internlm.plugin, "internlm", "tuneforge-internlm", also=also):
        yield


def answers(out):
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_eval_constrained_holds_internlm_answers_to_valid_calls_in_its_markup(commands, taught, tmp_path):
    free, held = tmp_path / "free.jsonl", tmp_path / "held.jsonl"
    common = ("eval", "--model", taught, "--dataset", "screen-commands", "--split", "test", "--max-new-tokens", 64)
    result = run_cli(*common, "--output", free)
    # Unconstrained, the model writes the call it was taught; the template reads it: a tool that does not exist, or a string.
    assert f"valid JSON calls: 0/{len(COMMANDS)}" in result.output, result.output
    for row in answers(free):
        assert not row["scores"]["valid_json"] and row["scores"]["problems"], row
    assert any(row["finish_reason"] == "tool_calls" for row in answers(free))  # calls the template read, that break the tools
    result = run_cli(*common, "--constrained", "--output", held)
    # Constrained, every answer is calls the template's parser reads back (finish_reason tool_calls: the engine
    # parsed them out of the text) and that validate against the tools.
    assert f"({len(COMMANDS)} rows, constrained decoding)" in result.output
    assert f"valid JSON calls: {len(COMMANDS)}/{len(COMMANDS)}" in result.output, result.output
    for row in answers(held):
        assert row["finish_reason"] == "tool_calls" and row["scores"]["valid_json"] and row["answer"] == "", row


def test_a_forced_tool_choice_holds_the_internlm_model_to_valid_calls(manager, taught):
    """``tool_choice: "required"`` holds the answer to a JSON list of calls (the same for every template), read back as calls."""
    from tuneforge.api import ChatRequest, SamplingParams, StructuredOutput, create_engine, judge_tool_calls

    # The server's schema of tool_choice "required" with parallel_tool_calls false. (It holds an integer to its digits, not
    # to a minimum and maximum: these tools give the screens as an enum.)
    tools = json.loads(json.dumps(TOOLS).replace('"minimum": 1, "maximum": 4', '"enum": [1, 2, 3, 4]'))
    calls = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]}, "arguments": t["function"]["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    forced = StructuredOutput({"type": "array", "items": {"anyOf": calls}, "minItems": 1, "maxItems": 1}, tool_call="required", source="tool_choice")
    engine = create_engine("pt", taught)
    try:
        rows = [[{"role": "user", "content": text}] for text, _, _ in COMMANDS]
        references = [{"tools": tools, "messages": messages + [{"role": "assistant", "content": "", "tool_calls": [call(name, arguments)]}]}
                      for messages, (_, name, arguments) in zip(rows, COMMANDS)]
        free = engine.generate([ChatRequest(messages, tools=tools, sampling=SamplingParams(max_tokens=40)) for messages in rows])
        held = engine.generate([ChatRequest(messages, tools=tools, sampling=SamplingParams(max_tokens=40, structured=forced)) for messages in rows])
        template = engine.template
    finally:
        engine.close()
    for row, [answer], [free_answer] in zip(references, held, free):
        assert answer.finish_reason == "tool_calls" and len(answer.tool_calls) == 1 and answer.text == "", answer
        message = {"role": "assistant", "content": answer.text, "tool_calls": answer.tool_calls}
        assert judge_tool_calls(row, message, template).valid_json, answer
        assert not judge_tool_calls(row, {"role": "assistant", "content": free_answer.text, "tool_calls": free_answer.tool_calls},
                                    template).valid_json, free_answer
