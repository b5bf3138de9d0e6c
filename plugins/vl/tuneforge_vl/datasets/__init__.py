"""Datasets this plugin registers: one sub-package each, with its generator."""
