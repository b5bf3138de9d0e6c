"""InternLM checkpoints for tuneforge; the hooks are in ``tuneforge_internlm.plugin``."""
