"""Tokenization with the length policy: drop, cut from the left or the right."""

import pytest

from tuneforge.data import Converted, fit_length, tokenize_conversations
from tuneforge.errors import DataError
from tuneforge.templates import IGNORE_INDEX, Encoded, get_template

SHORT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
LONG = [
    {"role": "user", "content": "Read these minutes: " + "budget review, hiring plan, office move, " * 8},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "What was decided last?"},
    {"role": "assistant", "content": "The office moves in May."},
]


def converted(messages, where="d.jsonl line 1"):
    return Converted({"messages": messages}, where, "d.jsonl", "messages")


@pytest.fixture(scope="module")
def chatml(smollm2_tokenizer):
    return get_template("chatml", smollm2_tokenizer)


def test_fit_length_policies():
    encoded = Encoded([1, 2, 3, 4, 5], [-100, -100, 3, 4, 5])
    assert fit_length(encoded, 5, "drop") is encoded
    assert fit_length(encoded, 4, "drop") is None
    assert fit_length(encoded, 3, "left") == Encoded([3, 4, 5], [3, 4, 5])
    assert fit_length(encoded, 3, "right") == Encoded([1, 2, 3], [-100, -100, 3])


def test_short_samples_pass_unchanged(chatml):
    samples, stats = tokenize_conversations([converted(SHORT)], chatml, max_length=512)
    encoded = chatml.encode(SHORT)
    assert samples == [{"input_ids": encoded.input_ids, "labels": encoded.labels}]
    assert (stats.samples, stats.tokens, stats.truncated, stats.dropped_too_long) == (1, len(encoded), 0, 0)
    assert stats.learned_tokens == encoded.num_learned


def test_drop_policy_drops_and_counts(chatml):
    long_length = len(chatml.encode(LONG))
    samples, stats = tokenize_conversations([converted(SHORT), converted(LONG)], chatml, max_length=long_length - 1)
    assert len(samples) == 1 and stats.dropped_too_long == 1 and stats.longest == long_length


def test_left_truncation_keeps_the_final_answer(chatml, smollm2_tokenizer):
    samples, stats = tokenize_conversations([converted(LONG)], chatml, max_length=40, truncation="left")
    (sample,) = samples
    assert len(sample["input_ids"]) == 40 and stats.truncated == 1
    assert smollm2_tokenizer.decode(sample["input_ids"]).endswith("The office moves in May.<|im_end|>\n")
    learned = [label for label in sample["labels"] if label != IGNORE_INDEX]
    assert smollm2_tokenizer.decode(learned).endswith("The office moves in May.<|im_end|>")


def test_right_truncation_keeps_the_start(chatml, smollm2_tokenizer):
    full = chatml.encode(LONG)
    noted_end = full.labels.index(smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>"))  # first learned end token
    samples, stats = tokenize_conversations([converted(LONG)], chatml, max_length=noted_end + 1, truncation="right")
    (sample,) = samples
    assert sample["input_ids"] == full.input_ids[: noted_end + 1]
    assert smollm2_tokenizer.decode([x for x in sample["labels"] if x != IGNORE_INDEX]) == "Noted.<|im_end|>"
    assert stats.truncated == 1


def test_sample_left_with_nothing_to_learn_is_dropped(chatml):
    samples, stats = tokenize_conversations([converted(LONG), converted(SHORT)], chatml, max_length=20, truncation="right")
    assert stats.dropped_no_learned == 1
    assert stats.samples == len(samples) == 1


def test_train_on_prompt(chatml):
    samples, stats = tokenize_conversations([converted(SHORT)], chatml, max_length=64, train_on_prompt=True)
    assert samples[0]["labels"] == samples[0]["input_ids"]
    assert stats.learned_tokens == len(samples[0]["input_ids"]) - 1  # the first token is never predicted


def test_bad_options(chatml):
    with pytest.raises(DataError, match="--max-length is 0; give a positive number"):
        tokenize_conversations([converted(SHORT)], chatml, max_length=0)
    with pytest.raises(DataError, match="--truncation is 'middle'; choose one of drop, left, right"):
        tokenize_conversations([converted(SHORT)], chatml, max_length=10, truncation="middle")


def test_template_errors_name_the_row(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = "{{ raise_exception('roles must alternate user/assistant') }}{{ messages|length }}"
    from tuneforge.templates import HFChatTemplate, TemplateError

    with pytest.raises(TemplateError, match="cannot render a plain user/assistant exchange .*roles must alternate"):
        HFChatTemplate(tokenizer)
    tokenizer.chat_template = (
        "{% if messages|length > 2 %}{{ raise_exception('only one exchange') }}{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    template = HFChatTemplate(tokenizer)
    with pytest.raises(DataError, match=r"^d.jsonl line 9: The chat template of .* failed on this conversation .*only one exchange"):
        tokenize_conversations([converted(SHORT), converted(LONG, "d.jsonl line 9")], template, max_length=512)
