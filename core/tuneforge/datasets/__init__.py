"""Datasets bundled with tuneforge: one sub-package each, with its generator and jsonl splits.

They are registered by name through ``tuneforge.builtin.datasets``, like any plugin's.
"""
