"""Vision-language models for tuneforge; the hooks are in ``tuneforge_vl.plugin``."""
