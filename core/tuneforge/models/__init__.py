"""Named models the core can fetch and convert (see builtin/models.py)."""
