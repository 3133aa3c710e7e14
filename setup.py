"""The compiled kernels of actzip.runtime and actzip.codecs. `optional=True`: without a working C compiler the install
still succeeds, and the runtime falls back to PyTorch, and ctxrans to its numba decoder, with a warning (each
package's native.py)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(f"actzip.{package}.kernels", [f"src/actzip/{package}/kernels.c"],
                             extra_compile_args=["-O3", "-std=c11"], optional=True)
                   for package in ("runtime", "codecs")])
