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

An engine that holds its own copy of the model (``--rollout-engine vllm``, created by the
run before the policy loads and handed in as ``engine``) must declare the ``weight_sync``
feature: before it samples for a new optimizer step it gets the policy's weights through
its ``load_weights``, each LoRA layer's product added to its base weight in a new tensor
(``policy_weights``: the policy is not merged and unmerged, which would round a 16-bit
base at every step), under the base model's checkpoint names.
"""

from __future__ import annotations

from typing import Any, Sequence

from tuneforge.api import ChatRequest, Loaded, SamplingParams, TuneforgeError, create_engine

__all__ = ["EngineRollouts", "groups", "policy_weights"]


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
                 batch_size: int, engine=None) -> None:
        self.name, self.tokenizer, self.template, self.template_name = name, tokenizer, template, template_name
        self.setup, self.requests, self.sampling = setup, requests, dict(sampling)
        self.batch_size = batch_size
        self.engine = engine
        self.syncs_weights = engine is not None  # an engine with its own weights, which get the policy's
        self._model = None  # the model the engine samples from
        self._synced_step = None  # the optimizer step whose weights the engine holds
        self.tokens = 0  # answer tokens sampled so far
        self.syncs = 0  # times the policy's weights were pushed into the engine

    def _engine(self, model):
        if self.syncs_weights:
            if self.engine is None:
                raise TuneforgeError(f"The {self.name} rollout engine was closed; start the run again.")
            return self.engine
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

    def sample(self, model, prompt_ids: Sequence[Sequence[int]], step: int | None = None) -> list[list[int]]:
        """Each prompt's answer ids, in the order of ``prompt_ids`` (equal consecutive prompts share a request).

        ``step``: the trainer's optimizer step; an engine with its own weights gets the policy's
        first when it has not had them since that step began (once a step, whatever the micro-batches).
        """
        engine = self._engine(model)
        if self.syncs_weights and (self._synced_step is None or step != self._synced_step):
            self.sync(model)
            self._synced_step = step
        requests = []
        for ids, count in groups(prompt_ids):
            messages, tools = self._conversation(ids)
            requests.append(ChatRequest(messages=messages, tools=tools, sampling=SamplingParams(n=count, **self.sampling)))
        answers = [list(c.token_ids) for group in engine.generate(requests) for c in group]
        self.tokens += sum(len(a) for a in answers)
        return answers

    def sync(self, model) -> None:
        """Push ``model``'s weights (a LoRA adapter's product added, the policy left as it is) into the engine."""
        self.engine.load_weights(policy_weights(model))
        self.syncs += 1

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


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "active_adapter")


def policy_weights(model):
    """``model``'s parameters under the base model's checkpoint names, as (name, tensor) pairs.

    For a peft model each LoRA layer's weight is given as the base weight plus the active
    adapter's product (``get_delta_weight``), added in float32 into a new tensor of the base's
    dtype: the policy itself is not touched, where merging into a 16-bit base and unmerging
    (trl's way for its colocated vLLM) would round the base weights a little at every step.
    The wrapper's prefixes go (``base_model.model.``, ``.base_layer``), the adapters' own
    weights are left out, and a module the adapter trains whole (``modules_to_save``) is
    given as the active adapter's copy.
    """
    if not _is_peft(model):
        for name, parameter in model.named_parameters():
            yield name, parameter.data
        return
    prefix = getattr(model, "prefix", "lora_")
    active = model.active_adapter
    adapted = {}  # a LoRA layer's base weight (its parameter name) -> the layer
    for module_name, module in model.named_modules():
        if getattr(module, "base_layer", None) is None or active not in (getattr(module, "lora_A", None) or {}):
            continue
        if (getattr(module, "use_dora", None) or {}).get(active):
            raise TuneforgeError(
                f"A rollout engine with weights of its own (--rollout-engine vllm) gets the policy's with each LoRA "
                f"layer's product added, which a DoRA adapter ({module_name}) is not; pass --rollout-engine pt, "
                f"or --train-type lora."
            )
        if getattr(module, "merged", False):
            raise TuneforgeError(f"The LoRA layer {module_name} is merged into its base already; unmerge it before a weight push.")
        adapted[f"{module_name}.base_layer.weight"] = module
    for name, parameter in model.named_parameters():
        tensor = parameter.data
        layer = adapted.get(name)
        if layer is not None:
            tensor = (tensor.float() + layer.get_delta_weight(active).float()).to(tensor.dtype)
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if prefix in name or ".original_module." in name:
            continue
        if ".modules_to_save." in name:
            if f".modules_to_save.{active}." not in name:
                continue  # another adapter's copy (the frozen reference's)
            name = name.replace(f".modules_to_save.{active}.", ".")
        yield name, tensor
