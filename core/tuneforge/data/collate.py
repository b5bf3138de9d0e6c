"""Batches of samples to tensors: padded, or packed without padding.

Packed batches are one row holding every sample back to back, with
``position_ids`` restarting at 0 for each sample and no ``attention_mask``:
transformers then builds a block-diagonal mask from the position ids (sdpa, eager:
``masking_utils.find_packed_sequence_indices``; flash attention: varlen), so no
token attends across samples. The first label of each sample is ignored, so no
token is trained to predict the start of the next sample. ``use_cache=False``
rides along: with a cache the model would not look for packed sequences.
With ``boundaries=True`` a packed batch also carries the samples' cumulative
lengths (``cu_seq_lens_q/k``, ``max_length_q/k``, the names transformers passes
down to variable-length attention kernels), so no kernel has to find them again.

Samples with ``extras`` (pixel values, and for some families an image grid and
position ids computed from its own tokens) are packed only where their template
says its extras pack (``Template.packs_extras``): the row's extras are the
samples' joined in order by the template's ``collate_extras``, and the model
finds each sample's images (and, for M-RoPE models, computes each sample's
positions) from the restarting ``position_ids``. Otherwise the packing collator
right-pads any batch that holds one, and the run says so once
(``DataSummary.packing``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ..templates import IGNORE_INDEX


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id, else 0."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def _round_up(length: int, multiple: int | None) -> int:
    if not multiple:
        return length
    return -(-length // multiple) * multiple


def _as_list(values) -> list[int]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


class PaddingCollator:
    """Right-pads a batch: ``input_ids``, ``attention_mask``, ``labels`` (-100 on pads).

    Samples' ``extras`` (pixel values, ...) are batched by ``collate_extras``, the
    template's, and passed to the model beside the ids.
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None, collate_extras: Callable | None = None) -> None:
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.collate_extras = collate_extras

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict:
        import torch

        ids = [_as_list(f["input_ids"]) for f in features]
        labels = [_as_list(f["labels"]) for f in features]
        width = _round_up(max(len(x) for x in ids), self.pad_to_multiple_of)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        label_tensor = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, (sample_ids, sample_labels) in enumerate(zip(ids, labels)):
            n = len(sample_ids)
            input_ids[row, :n] = torch.tensor(sample_ids, dtype=torch.long)
            label_tensor[row, :n] = torch.tensor(sample_labels, dtype=torch.long)
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_tensor}
        extras = [f.get("extras") or {} for f in features]
        if any(extras):
            if self.collate_extras is None:
                from ..templates import concat_extras

                self.collate_extras = concat_extras
            batch.update(self.collate_extras(extras))
        return batch


class PackingCollator:
    """Concatenates a batch into one row of shape ``[1, total]`` with restarting ``position_ids``.

    With ``packs_extras`` (the template's ``packs_extras``) the samples' extras are
    joined by ``collate_extras`` beside the packed row; without it a batch holding a
    sample with extras is right-padded instead (``PaddingCollator``).
    """

    def __init__(
        self,
        pad_id: int,
        pad_to_multiple_of: int | None = None,
        boundaries: bool = False,
        collate_extras: Callable | None = None,
        packs_extras: bool = False,
    ) -> None:
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.boundaries = boundaries
        self.packs_extras = packs_extras
        self.padded = PaddingCollator(pad_id, pad_to_multiple_of, collate_extras=collate_extras)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict:
        import torch

        extras = [feature.get("extras") or {} for feature in features]
        if any(extras) and not self.packs_extras:
            return self.padded(features)
        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        lengths: list[int] = []
        for feature in features:
            sample_ids = _as_list(feature["input_ids"])
            sample_labels = _as_list(feature["labels"])
            input_ids += sample_ids
            labels += [IGNORE_INDEX] + sample_labels[1:]
            positions += range(len(sample_ids))
            lengths.append(len(sample_ids))
        padding = _round_up(len(input_ids), self.pad_to_multiple_of) - len(input_ids)
        if padding:  # a filler sequence of its own, learned nowhere
            input_ids += [self.pad_id] * padding
            labels += [IGNORE_INDEX] * padding
            positions += range(padding)
            lengths.append(padding)
        batch = {
            "input_ids": torch.tensor([input_ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "use_cache": False,
        }
        if self.boundaries:
            cumulative = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch.update(cu_seq_lens_q=cumulative, cu_seq_lens_k=cumulative, max_length_q=max(lengths), max_length_k=max(lengths))
        if any(extras):
            from ..templates import concat_extras

            batch.update((self.padded.collate_extras or concat_extras)(extras))
        return batch


def make_collator(
    tokenizer,
    packing: bool,
    pad_to_multiple_of: int | None = None,
    boundaries: bool = False,
    collate_extras: Callable | None = None,
    packs_extras: bool = False,
) -> Callable[[Sequence[Mapping[str, Any]]], dict]:
    """A collator for ``{"input_ids", "labels", "extras"?}`` samples: packed (padding-free) or right-padded.

    ``collate_extras`` (the template's) batches the samples' extras; batches with extras are packed only
    with ``packs_extras`` (the template's), else right-padded.
    """
    pad_id = pad_token_id(tokenizer)
    if packing:
        return PackingCollator(
            pad_id, pad_to_multiple_of, boundaries=boundaries, collate_extras=collate_extras, packs_extras=packs_extras
        )
    return PaddingCollator(pad_id, pad_to_multiple_of, collate_extras=collate_extras)
