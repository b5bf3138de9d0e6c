"""Errors meant for a person: the message says what was wrong and what to do."""


class TuneforgeError(Exception):
    """A problem with the user's input or setup, reported without a traceback."""


class DataError(TuneforgeError):
    """A dataset file, row or name that cannot be used."""
