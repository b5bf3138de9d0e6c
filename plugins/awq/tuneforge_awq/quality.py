"""How much a quantized model lost against the merged model it came from.

Two figures, each computed for both models on the same rows, with the run's own
chat template:

- perplexity on held-out conversations: ``exp`` of the mean negative log-likelihood
  of the tokens the run learned (the assistant turns, as its training loss counts
  them); the *quality loss* is the quantized model's perplexity over the merged
  model's, minus one (0.03: 3% higher);
- greedy-answer agreement on held-out prompts (each conversation up to its last
  assistant turn): the share of prompts answered with exactly the same tokens
  (exact match), and the mean token overlap of the two answers (the F1 of their
  token multisets: 1 when they hold the same tokens, 0 when they share none).

``quality_report.json`` holds the figures, the settings and a few answer pairs;
``table`` is the short text printed at the end of the export.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

from tuneforge.api import IGNORE_INDEX

REPORT = "quality_report.json"
EXAMPLES_KEPT = 3


def _device():
    import torch

    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def load_for_measure(path: str):
    """A checkpoint (merged or compressed-tensors) on the accelerator if there is one, else the CPU, ready to score."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", trust_remote_code=False)
    return model.to(_device()).eval()


def encode_rows(rows: Sequence, template, max_length: int) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` of each conversation, cut to ``max_length`` tokens; rows with nothing to score are left out."""
    encoded = []
    for row in rows:
        sample = template.encode(row.messages, tools=row.tools)
        ids, labels = list(sample.input_ids)[:max_length], list(sample.labels)[:max_length]
        if any(label != IGNORE_INDEX for label in labels[1:]):
            encoded.append((ids, labels))
    return encoded


def prompts_of(rows: Sequence, template, count: int) -> list[list[int]]:
    """The generation prompt of each conversation up to its last assistant turn (``count`` of them at most)."""
    prompts = []
    for row in rows:
        messages = list(row.messages)
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if not last:
            continue
        prompts.append(list(template.prompt(messages[:last], tools=row.tools)))
        if len(prompts) == count:
            break
    return prompts


def negative_log_likelihood(model, samples: Sequence[tuple[list[int], list[int]]]) -> tuple[float, int]:
    """Summed NLL of the labelled tokens of ``samples`` and how many there were."""
    import torch

    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for ids, labels in samples:
            input_ids = torch.tensor([ids], device=device)
            logits = model(input_ids=input_ids).logits[0, :-1].float()
            target = torch.tensor(labels[1:], device=device)
            keep = target != IGNORE_INDEX
            losses = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
            total += float(losses)
            tokens += int(keep.sum())
    return total, tokens


def greedy_answers(model, prompts: Sequence[list[int]], stop_ids: Sequence[int], max_new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy answer, as token ids, up to (not including) its first stop token."""
    import torch

    device = next(model.parameters()).device
    stops = set(stop_ids)
    answers = []
    with torch.inference_mode():
        for prompt in prompts:
            input_ids = torch.tensor([prompt], device=device)
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=list(stops) or None, pad_token_id=(min(stops) if stops else 0),
            )
            answer = []
            for token in out[0, len(prompt):].tolist():
                if token in stops:
                    break
                answer.append(token)
            answers.append(answer)
    return answers


def token_overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """F1 of the two token multisets (1.0 for two empty answers)."""
    if not a and not b:
        return 1.0
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def measure(model, samples, prompts, stop_ids, max_new_tokens) -> dict[str, Any]:
    nll, tokens = negative_log_likelihood(model, samples)
    return {"nll": nll, "tokens": tokens, "answers": greedy_answers(model, prompts, stop_ids, max_new_tokens)}


def compare(merged: dict, quantized: dict, *, decode, rows_from: str, held_out: bool, settings: dict) -> dict[str, Any]:
    """The report of two ``measure`` results on the same rows and prompts."""
    tokens = merged["tokens"]
    ppl_merged = math.exp(merged["nll"] / tokens) if tokens else float("nan")
    ppl_quantized = math.exp(quantized["nll"] / tokens) if tokens else float("nan")
    pairs = list(zip(merged["answers"], quantized["answers"]))
    exact = sum(a == b for a, b in pairs)
    overlap = sum(token_overlap(a, b) for a, b in pairs) / len(pairs) if pairs else float("nan")
    return {
        **settings,
        "rows_from": rows_from,
        "held_out": held_out,
        "perplexity": {
            "rows": settings.get("perplexity_rows"),
            "tokens": tokens,
            "merged": ppl_merged,
            "quantized": ppl_quantized,
            "increase": ppl_quantized / ppl_merged - 1 if tokens else float("nan"),
        },
        "greedy": {
            "prompts": len(pairs),
            "exact_match": exact / len(pairs) if pairs else float("nan"),
            "exact_matches": exact,
            "token_overlap": overlap,
            "examples": [{"merged": decode(a), "quantized": decode(b)} for a, b in pairs[:EXAMPLES_KEPT]],
        },
    }


def table(report: dict[str, Any]) -> str:
    """The few lines printed at the end of an export."""
    ppl, greedy = report["perplexity"], report["greedy"]
    name = report["format"]
    seen = "" if report["held_out"] else " (the model trained on them: the run held no rows out)"
    lines = [
        f"quality of the {name} export against the merged model, on {report['rows_from']}{seen}:",
        f"  {'':<34}{'merged':>10}{name:>10}",
        f"  {'perplexity (' + str(ppl['rows']) + ' rows, ' + str(ppl['tokens']) + ' tokens)':<34}{ppl['merged']:>10.3f}{ppl['quantized']:>10.3f}  ({ppl['increase']:+.2%})",
        f"  {'greedy answers (' + str(greedy['prompts']) + ' prompts)':<34}exact match {greedy['exact_matches']}/{greedy['prompts']} ({greedy['exact_match']:.0%}), token overlap {greedy['token_overlap']:.2f}",
    ]
    return "\n".join(lines)
