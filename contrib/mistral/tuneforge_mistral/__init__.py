"""Mistral checkpoints for tuneforge; the hooks are in ``tuneforge_mistral.plugin``."""
