"""The errors actzip raises. The CLI turns each into a one-line message and exit code 2."""


class ActzipError(Exception):
    """Base class of every error actzip raises on purpose."""


class CorruptStreamError(ActzipError, ValueError):
    """An encoded stream is malformed: truncated, tampered with, or not an actzip stream."""


class MissingDataError(ActzipError, FileNotFoundError):
    """Data or weights that are not on this machine; the message says how to get them."""


class ActzipWarning(UserWarning):
    """Something was skipped but the work went on (e.g. a non-image file in an image folder)."""
