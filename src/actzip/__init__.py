"""actzip: compress and accelerate the activation maps of convolutional neural networks."""

__version__ = "0.1.0"

from .analysis import AnalyzeConfig, analyze, measure  # noqa: E402
from .errors import ActzipError, ActzipWarning, CorruptStreamError, MissingDataError  # noqa: E402
from .stream import dumps, loads  # noqa: E402

__all__ = ["ActzipError", "ActzipWarning", "AnalyzeConfig", "CorruptStreamError", "MissingDataError",
           "analyze", "dumps", "loads", "measure", "__version__"]
