"""The InternLM templates against the official Jinja template of InternLM2.5 and InternLM3, rendered by transformers.

Generated conversations (tuneforge.testing.reference): text and token ids with and
without the generation prompt, every prompt a conversation holds, and the loss mask
on exactly the assistant turns of the official rendering. The official template knows
no tools (InternLM's tool layout is documented only in its chat format notes), so
conversations carry none here.
"""

import pytest

from tuneforge.testing import registry
from tuneforge.testing.reference import Conversation, Official, check_against_official, conversations, official_template

CASES = conversations(seed=7, count=120, tools=False)
FILES = {"internlm2": "internlm2_5-7b-chat.jinja", "internlm3": "internlm3-8b-instruct.jinja"}


def build(manager, name, tokenizer):
    return registry(manager).get("chat_templates", name).build(tokenizer)


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_template_matches_the_official_one(manager, internlm_tokenizer, name):
    official = Official(internlm_tokenizer, official_template(FILES[name]))
    template = build(manager, name, internlm_tokenizer)
    outcomes = [check_against_official(template, official, case) for case in CASES]
    assert outcomes.count("renders") == len(CASES)


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}],
    [{"role": "system", "content": None}, {"role": "user", "content": "Hi"}],
], ids=["user", "assistant", "system"])
def test_where_the_official_template_fails_the_template_raises_a_sentence(manager, internlm_tokenizer, name, messages):
    official = Official(internlm_tokenizer, official_template(FILES[name]))
    assert check_against_official(build(manager, name, internlm_tokenizer), official, Conversation(messages)).startswith("raises")
