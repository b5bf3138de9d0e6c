"""GRPO's answers sampled through a tuneforge inference engine, in process, from the policy being trained.

trl hands the trainer's ``_generate_single_turn`` the batch's prompt ids, each prompt
repeated once per answer of its group. ``EngineRollouts`` turns each run of equal
prompts into one ``ChatRequest`` (the row's messages and tools, ``n`` answers) for
the engine the run names (``--rollout-engine pt``), built once over the policy model
itself: no copy of the weights and no syncing, since every optimizer step updates the
weights the engine reads. The engine renders the prompt with the run's chat template
(the same ids the trainer holds: a prompt cut on the left cannot be re-rendered, and
is refused before training), stops at the template's end markers and stop strings as
``tuneforge infer`` and the server do, and returns each answer's token ids, the final
stop token included, which is what trl scores and learns from.
"""

from __future__ import annotations

from typing import Any, Sequence

from tuneforge.api import ChatRequest, Loaded, SamplingParams, TuneforgeError, create_engine

__all__ = ["EngineRollouts", "groups"]


def groups(prompt_ids: Sequence[Sequence[int]]) -> list[tuple[tuple[int, ...], int]]:
    """Runs of equal consecutive prompts, as (ids, how many): trl repeats each prompt once per answer."""
    runs: list[tuple[tuple[int, ...], int]] = []
    for ids in prompt_ids:
        key = tuple(ids)
        if runs and runs[-1][0] == key:
            runs[-1] = (key, runs[-1][1] + 1)
        else:
            runs.append((key, 1))
    return runs


class EngineRollouts:
    """Samples GRPO's answers with the inference engine ``name`` over the policy model.

    ``requests`` maps a prompt's ids to the (messages, tools) that render them;
    ``sampling`` holds the SamplingParams every answer shares (temperature, max_tokens).
    The engine is created at the first call, on the model trl unwrapped for generation,
    and kept until ``close``.
    """

    def __init__(self, name: str, *, tokenizer, template, template_name: str, setup, requests: dict, sampling: dict,
                 batch_size: int) -> None:
        self.name, self.tokenizer, self.template, self.template_name = name, tokenizer, template, template_name
        self.setup, self.requests, self.sampling = setup, requests, dict(sampling)
        self.batch_size = batch_size
        self.engine = None
        self._model = None  # the model the engine samples from
        self.tokens = 0  # answer tokens sampled so far

    def _engine(self, model):
        if self.engine is not None and self._model is model:
            return self.engine
        self.close()
        import torch

        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        loaded = Loaded(
            model=model,
            tokenizer=self.tokenizer,
            template=self.template,
            template_name=self.template_name,
            family=getattr(self.setup, "family", None),
            run=None,
            device=device,
            resolved=getattr(self.setup, "resolved", None),
        )
        self.engine = create_engine(self.name, loaded, batch_size=self.batch_size)
        self._model = model
        return self.engine

    def sample(self, model, prompt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Each prompt's answer ids, in the order of ``prompt_ids`` (equal consecutive prompts share a request)."""
        engine = self._engine(model)
        requests = []
        for ids, count in groups(prompt_ids):
            messages, tools = self._conversation(ids)
            requests.append(ChatRequest(messages=messages, tools=tools, sampling=SamplingParams(n=count, **self.sampling)))
        answers = [list(c.token_ids) for group in engine.generate(requests) for c in group]
        self.tokens += sum(len(a) for a in answers)
        return answers

    def _conversation(self, ids: tuple[int, ...]) -> tuple[list, Any]:
        try:
            return self.requests[ids]
        except KeyError:
            raise TuneforgeError(
                f"--rollout-engine {self.name} was handed a prompt of {len(ids)} tokens that is none of the run's "
                f"prompts; pass --rollout-engine trl."
            ) from None

    def close(self) -> None:
        if self.engine is not None:
            engine, self.engine, self._model = self.engine, None, None
            engine.close()
