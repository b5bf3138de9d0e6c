"""The vLLM worker's side of ``VLLMEngine.load_weights``: vLLM mixes ``WeightLoading`` into its worker class.

It runs in vLLM's worker process (the engine core's, on one device), so it imports
only vLLM and its dependencies; the engine names it in ``worker_extension_cls``.
"""

from __future__ import annotations


class WeightLoading:
    """Reloads the served model's weights from a safetensors file, in place (vLLM's ``reload_weights``)."""

    def tuneforge_load_weights(self, path: str) -> int:
        """Load every tensor of the file at ``path`` (checkpoint names) into the model; the number loaded."""
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as weights:
            names = list(weights.keys())
            # one call with every weight: vLLM rebuilds a fused layer (qkv, gate_up) once all its parts arrived
            self.reload_weights(weights_iterator=((name, weights.get_tensor(name)) for name in names), is_checkpoint_format=True)
        self._tuneforge_refresh_heads()
        return len(names)

    def _tuneforge_refresh_heads(self) -> None:
        """Prepare the output head again from its (new) weight.

        A head tied to the embeddings gets no weight of its own, so vLLM's reload leaves it as it
        was; on the CPU it multiplies with a packed copy of the weight made at load time (vLLM
        0.32), which would keep the old embeddings. Elsewhere preparing it again changes nothing.
        """
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, UnquantizedEmbeddingMethod

        for module in self.model_runner.get_model().modules():
            method = getattr(module, "quant_method", None)
            if isinstance(module, ParallelLMHead) and isinstance(method, UnquantizedEmbeddingMethod):
                method.process_weights_after_loading(module)
