"""Errors that name the file, id or key at fault."""


class VidlangError(Exception):
    """Base class: a user-facing error with a clear message."""


class DataError(VidlangError):
    """Bad input data: a missing id, NaN features, a wrong shape, an unreadable file."""


class ConfigError(VidlangError):
    """An unknown or ill-typed config key."""


class CheckpointError(VidlangError):
    """A checkpoint that is unreadable or was written by another model."""
