"""The one compiled part: the coordinator's fused tail (service/core/_tail.c).

Optional: without a C compiler (e.g. a slim container image) the build skips it with a
warning and service/core/tail.py runs the same arithmetic as numpy passes, bit for bit.
Everything else about the package is in pyproject.toml.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("dptrain.core._tail", ["service/core/_tail.c"], optional=True,
                             extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"])])
