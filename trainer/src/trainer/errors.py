"""Errors the trainer reports as one line: `finsent-trainer: error: <message>` and exit code 2.

TrainerError
 +-- ConfigError      bad flag combination or value
 +-- DataError        missing column, unknown label, empty split, undecodable CSV
 +-- StorageError     unreadable/unwritable URI (local or gs://)
 +-- CheckpointError  pretrained checkpoint incomplete (no vocab.txt, no config.json, ...)
"""


class TrainerError(Exception):
    """Base class: the message is shown to the user as is, on one line."""


class ConfigError(TrainerError):
    pass


class DataError(TrainerError):
    pass


class StorageError(TrainerError):
    pass


class CheckpointError(TrainerError):
    pass


def describe(exc: BaseException) -> str:
    """`TypeName: first line of its message`: how an underlying error is quoted inside a one-line message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
