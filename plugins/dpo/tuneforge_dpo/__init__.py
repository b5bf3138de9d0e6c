"""Preference alignment for tuneforge; the hooks are in ``tuneforge_dpo.plugin``.

Nothing here imports trl: it is imported when a method runs, not when the plugin registers.
"""
