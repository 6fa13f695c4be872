"""The compiled parts: the coordinator's fused tail (service/core/_tail.c) and the engine's
kernels (workers/engine/_kernels.c).

Optional: without a C compiler (e.g. a slim container image) the build skips them with a
warning, and service/core/tail.py and the engine's ops run the same arithmetic as numpy
passes, bit for bit. Everything else about the package is in pyproject.toml.
"""
from setuptools import Extension, setup

FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math"]  # no fused multiply-adds: numpy's bits

setup(ext_modules=[Extension("dptrain.core._tail", ["service/core/_tail.c"], optional=True, extra_compile_args=FLAGS),
                   Extension("dptrain.engine._kernels", ["workers/engine/_kernels.c"], optional=True,
                             extra_compile_args=FLAGS)])
