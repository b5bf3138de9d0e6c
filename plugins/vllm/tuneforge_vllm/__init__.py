"""tuneforge-vllm: the ``vllm`` inference engine (see ``tuneforge_vllm.engine``)."""
