"""actzip: compress and accelerate the activation maps of convolutional neural networks."""

import importlib

__version__ = "0.1.0"

# Names are imported on first use, so that `import actzip` (and the command line's --help, codecs
# and info) starts without loading torch.
_LAZY = {"AnalyzeConfig": ".analysis", "analyze": ".analysis", "measure": ".analysis", "dumps": ".stream",
         "loads": ".stream", "ActzipError": ".errors", "ActzipWarning": ".errors", "CorruptStreamError": ".errors",
         "MissingDataError": ".errors"}

__all__ = ["ActzipError", "ActzipWarning", "AnalyzeConfig", "CorruptStreamError", "MissingDataError",
           "analyze", "dumps", "loads", "measure", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'actzip' has no attribute {name!r}")
