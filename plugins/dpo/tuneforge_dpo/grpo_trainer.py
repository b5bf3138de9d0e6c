"""trl's GRPOTrainer on prompts the run's chat template already encoded.

trl renders a conversational prompt with the tokenizer's own chat template; tuneforge
encodes it with the model family's template (tools included), so the dataset's
``prompt`` column is the prompt's text (what trl logs) and its ids are looked up
here. Sampling stops at the template's end-of-turn markers as well as the tokenizer's
end-of-sequence token (they differ for many families). With ``rollouts`` (an
``EngineRollouts``) the answers are sampled by a tuneforge inference engine over the
policy instead of trl's ``generate``. This module imports trl: it is imported only when
``--method grpo`` runs.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.extras.profiling import profiling_context  # noqa: E402
from trl.models import unwrap_model_for_generation  # noqa: E402
from trl.trainer import grpo_trainer as trl_grpo  # noqa: E402

from tuneforge.api import TuneforgeTrainer  # noqa: E402

from .trainers import _NoModelCard  # noqa: E402

__all__ = ["GRPOConfig", "TuneforgeGRPOTrainer"]


class TuneforgeGRPOTrainer(_NoModelCard, TuneforgeTrainer, GRPOTrainer):
    """GRPOTrainer whose prompts are the template's ids; ``ref_model``: a frozen reference of tuneforge's loading.

    trl builds the reference of a fully tuned model itself, from the model's name; with
    ``ref_model`` given it is built without one (``beta`` 0 while trl sets up) and this
    reference is used instead, as trl uses its own.
    """

    def __init__(self, *args, prompt_ids: dict[str, list[int]], stop_token_ids=(), ref_model=None, rollouts=None, **kwargs):
        self._prompt_ids = prompt_ids
        self._rollouts = rollouts
        config = kwargs["args"]
        beta = config.beta
        if ref_model is not None:
            config.beta = 0.0
        try:
            super().__init__(*args, **kwargs)
        finally:
            config.beta = beta
        if ref_model is not None:
            self.beta = beta
            self.ref_model = self._prepared_reference(ref_model)
        # trl stops sampling, and masks what follows, at these ids (the model's generation config's and the tokenizer's)
        self.eos_token_ids = [*self.eos_token_ids, *(t for t in stop_token_ids if t not in self.eos_token_ids)]
        self.generation_config.eos_token_id = self.eos_token_ids
        self.generation_kwargs["eos_token_id"] = self.eos_token_ids

    def _generate_and_score_completions(self, *args, **kwargs):
        # Sampling and the old/reference log-probabilities run before the training step's autocast: a bf16 base
        # with its float32 LoRA weights (the core keeps adapters in float32) needs it here too.
        with self.accelerator.autocast():
            return super()._generate_and_score_completions(*args, **kwargs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self._rollouts is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        import torch

        with (
            profiling_context(self, f"tuneforge.{self._rollouts.name}.generate"),
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            # an engine with its own copy of the weights gets the policy's once per optimizer step
            completion_ids = self._rollouts.sample(unwrapped_model, prompt_ids, step=self.state.global_step)
        return completion_ids, None  # trl computes the log-probabilities it needs itself

    def _prepared_reference(self, ref_model):
        """The reference as trl prepares its own: its log-probabilities from the fused head, placed for the backend."""
        trl_grpo.disable_dropout_in_model(ref_model)
        trl_grpo.add_fused_lm_head(
            ref_model, temperature=self.temperature, cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32
        )
        if self.is_deepspeed_enabled:
            return trl_grpo.prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            return trl_grpo.prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    def _tokenize_prompts(self, prompts: list):
        return [list(self._prompt_ids[prompt]) for prompt in prompts], None, {}
