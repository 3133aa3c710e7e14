"""The compiled kernels of actzip.runtime. `optional=True`: without a working C compiler the install
still succeeds, and the runtime falls back to PyTorch with a warning (actzip/runtime/native.py)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("actzip.runtime.kernels", ["src/actzip/runtime/kernels.c"],
                             extra_compile_args=["-O3", "-std=c11"], optional=True)])
