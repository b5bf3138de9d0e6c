"""Every Qwen template against the official Jinja template of its model, rendered by transformers.

Several hundred generated conversations (tuneforge.testing.reference) per template:
text and token ids with and without the generation prompt, every prompt a
conversation holds, and the loss mask on exactly the assistant turns of the official
rendering. Qwen2's official template knows no tools, so Qwen2 is compared on
conversations without them. Qwen3 is compared with thinking unset, on and off.
"""

import pytest

from tuneforge.testing import registry
from tuneforge.testing.reference import (
    Official,
    arguments_as_objects,
    check_against_official,
    conversations,
    official_template,
    without_think_blocks,
)

QWEN2 = conversations(seed=2, count=80, tools=False)
QWEN2_5 = conversations(seed=25, count=160, tools=True)
QWEN3 = conversations(seed=3, count=160, tools=True, reasoning=True)


def build(manager, name, tokenizer):
    return registry(manager).get("chat_templates", name).build(tokenizer)


def compare(template, official, cases, **options):
    outcomes = [check_against_official(template, official, case, **options) for case in cases]
    assert outcomes.count("renders") >= len(cases) // 2, outcomes  # the generator mostly makes renderable conversations
    return outcomes


def test_the_tokenizer_has_the_qwen_markup_as_single_tokens(qwen_tokenizer):
    """The comparisons are of token ids: the test tokenizer must split nothing a Qwen tokenizer keeps whole."""
    for token in ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"):
        assert len(qwen_tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token


def test_qwen2_matches_the_official_template(manager, qwen_tokenizer):
    official = Official(qwen_tokenizer, official_template("Qwen2-7B-Instruct.jinja"))
    compare(build(manager, "qwen2", qwen_tokenizer), official, QWEN2)


def test_qwen2_5_matches_the_official_template(manager, qwen_tokenizer):
    official = Official(qwen_tokenizer, official_template("Qwen2.5-7B-Instruct.jinja"), prepare=arguments_as_objects)
    compare(build(manager, "qwen2_5", qwen_tokenizer), official, QWEN2_5)


@pytest.mark.parametrize("thinking", [None, True], ids=["thinking-unset", "thinking-on"])
def test_qwen3_matches_the_official_template(manager, qwen_tokenizer, thinking):
    official = Official(qwen_tokenizer, official_template("Qwen3-8B.jinja"))
    if thinking is not None:
        official = official.with_kwargs(enable_thinking=thinking)
    options = {} if thinking is None else {"options": {"enable_thinking": thinking}}
    compare(build(manager, "qwen3", qwen_tokenizer), official, QWEN3, **options)


def test_qwen3_nothink_matches_the_official_template_with_thinking_off(manager, qwen_tokenizer):
    unset = Official(qwen_tokenizer, official_template("Qwen3-8B.jinja"))
    official = unset.with_kwargs(enable_thinking=False)
    compare(build(manager, "qwen3-nothink", qwen_tokenizer), official, QWEN3, header=unset)
    # The same through the thinking template with thinking turned off for a request (prompts and text only).
    compare(build(manager, "qwen3", qwen_tokenizer), official, QWEN3[:60], options={"enable_thinking": False}, encode=False)
    # And the other way round: the nothink template with thinking turned on for a request.
    compare(build(manager, "qwen3-nothink", qwen_tokenizer), unset.with_kwargs(enable_thinking=True), QWEN3[:60], options={"enable_thinking": True}, encode=False)


def test_qwen3_answer_only_renders_as_the_official_template_and_learns_the_answers(manager, qwen_tokenizer):
    official = Official(qwen_tokenizer, official_template("Qwen3-8B.jinja"))
    compare(build(manager, "qwen3-answer-only", qwen_tokenizer), official, QWEN3, learned=without_think_blocks)


# Conversations the official templates cannot render (they concatenate a None content): tuneforge raises too.
UNRENDERABLE = [
    ("qwen2", "Qwen2-7B-Instruct.jinja", [{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}]),
    ("qwen2_5", "Qwen2.5-7B-Instruct.jinja", [{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}]),
    ("qwen2_5", "Qwen2.5-7B-Instruct.jinja", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]),
    ("qwen2_5", "Qwen2.5-7B-Instruct.jinja", [{"role": "system", "content": None}, {"role": "user", "content": "Hi"}]),
    ("qwen3", "Qwen3-8B.jinja", [{"role": "system", "content": None}, {"role": "user", "content": "Hi"}]),
]


@pytest.mark.parametrize("name, file_name, messages", UNRENDERABLE, ids=[f"{n}-{k}" for k, (n, _, _) in enumerate(UNRENDERABLE)])
def test_where_the_official_template_fails_the_template_raises_a_sentence(manager, qwen_tokenizer, name, file_name, messages):
    from tuneforge.testing.reference import Conversation

    official = Official(qwen_tokenizer, official_template(file_name))
    outcome = check_against_official(build(manager, name, qwen_tokenizer), official, Conversation(messages))
    assert outcome.startswith("raises")


def test_dataset_rows_with_reasoning_train_as_the_official_template_renders_them(manager, qwen_tokenizer):
    """The data path keeps reasoning_content on answers, so a row trains on what the official template renders."""
    from tuneforge.api import Row, convert_rows
    from tuneforge.testing.reference import Conversation

    official = Official(qwen_tokenizer, official_template("Qwen3-8B.jinja"))
    template = build(manager, "qwen3", qwen_tokenizer)
    # Rows as a dataset holds them: they end with an answer, with no empty messages or later system prompts (refused there).
    def dataset_row(case):
        empty = any(m["role"] in ("user", "assistant") and not (m.get("content") or "").strip() and not m.get("tool_calls") for m in case.messages)
        return not empty and not {"prompt", "later system"} & set(case.notes)

    rows = [c for c in QWEN3 if dataset_row(c)]
    rows = [c for c in rows if any("reasoning_content" in m for m in c.messages)]
    assert len(rows) >= 20
    converted = convert_rows([Row({"messages": c.messages, **({"tools": c.tools} if c.tools else {})}, f"row {c.number}", "rows.jsonl") for c in rows])
    assert len(converted) == len(rows)
    for case, row in zip(rows, converted):
        kept = [m.get("reasoning_content") for m in row.data["messages"]]
        assert kept == [m.get("reasoning_content") for m in case.messages]
        check_against_official(template, official, Conversation(row.data["messages"], row.data.get("tools"), case.number, case.notes))
