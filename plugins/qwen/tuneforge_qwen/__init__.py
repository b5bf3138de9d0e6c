"""Qwen checkpoints for tuneforge; the hooks are in ``tuneforge_qwen.plugin``."""
