"""Collators: padded batches, and packed batches that never attend across samples."""

import pytest

from tuneforge.data import make_collator
from tuneforge.templates import IGNORE_INDEX, get_template

CONVERSATIONS = [
    [{"role": "user", "content": "Who chaired the meeting?"}, {"role": "assistant", "content": "Ana chaired it."}],
    [{"role": "user", "content": "When?"}, {"role": "assistant", "content": "Friday at ten, in room four, after the stand-up."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Decision?"},
        {"role": "assistant", "content": "Ship."},
        {"role": "user", "content": "Owner?"},
        {"role": "assistant", "content": "Ben."},
    ],
]


@pytest.fixture(scope="module")
def samples(smollm2_tokenizer):
    template = get_template("chatml", smollm2_tokenizer)
    out = []
    for messages in CONVERSATIONS:
        encoded = template.encode(messages)
        out.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    assert len({len(s["input_ids"]) for s in out}) == 3  # different lengths, so padding happens
    return out


def test_padded_batch(smollm2_tokenizer, samples):
    batch = make_collator(smollm2_tokenizer, packing=False)(samples)
    longest = max(len(s["input_ids"]) for s in samples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, longest)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == sample["input_ids"]
        assert batch["labels"][row, :n].tolist() == sample["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert batch["input_ids"][row, n:].tolist() == [smollm2_tokenizer.pad_token_id] * (longest - n)
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (longest - n)


def test_padded_batch_to_a_multiple(smollm2_tokenizer, samples):
    batch = make_collator(smollm2_tokenizer, packing=False, pad_to_multiple_of=64)(samples)
    assert batch["input_ids"].shape[1] % 64 == 0


def test_packed_batch_layout(smollm2_tokenizer, samples):
    batch = make_collator(smollm2_tokenizer, packing=True)(samples)
    total = sum(len(s["input_ids"]) for s in samples)
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, total)
    assert batch["input_ids"][0].tolist() == [i for s in samples for i in s["input_ids"]]
    assert batch["position_ids"][0].tolist() == [p for s in samples for p in range(len(s["input_ids"]))]
    expected_labels = [label for s in samples for label in [IGNORE_INDEX] + s["labels"][1:]]
    assert batch["labels"][0].tolist() == expected_labels


def test_packed_batch_padding_is_a_separate_unlearned_sequence(smollm2_tokenizer, samples):
    batch = make_collator(smollm2_tokenizer, packing=True, pad_to_multiple_of=64)(samples)
    total = sum(len(s["input_ids"]) for s in samples)
    width = batch["input_ids"].shape[1]
    assert width % 64 == 0 and width > total
    assert batch["position_ids"][0, total:].tolist() == list(range(width - total))
    assert batch["labels"][0, total:].tolist() == [IGNORE_INDEX] * (width - total)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_and_logits_equal_padded(tiny_llama_dir, smollm2_tokenizer, samples, attention):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=attention, dtype=torch.float32)
    model.train()  # as in training: the config's use_cache is on, no dropout in this model
    padded = make_collator(smollm2_tokenizer, packing=False)(samples)
    packed = make_collator(smollm2_tokenizer, packing=True)(samples)
    with torch.no_grad():
        padded_loss = model(**padded).loss
        packed_out = model(**packed)
        torch.testing.assert_close(packed_out.loss, padded_loss, rtol=1e-5, atol=1e-5)

        start = 0
        for sample in samples:
            n = len(sample["input_ids"])
            alone = model(input_ids=torch.tensor([sample["input_ids"]])).logits[0]
            torch.testing.assert_close(packed_out.logits[0, start : start + n], alone, rtol=1e-4, atol=1e-5)
            start += n


def test_packing_without_restarting_positions_would_mix_samples(tiny_llama_dir, smollm2_tokenizer, samples):
    """The equality above is not trivial: one causal row over all samples gives other logits."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa", dtype=torch.float32)
    packed = make_collator(smollm2_tokenizer, packing=True)(samples)
    first = len(samples[0]["input_ids"])
    second = samples[1]["input_ids"]
    with torch.no_grad():
        causal = model(input_ids=packed["input_ids"], use_cache=False).logits[0, first : first + len(second)]
        alone = model(input_ids=torch.tensor([second])).logits[0]
    assert not torch.allclose(causal, alone, atol=1e-3)
