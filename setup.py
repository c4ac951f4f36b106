"""Build configuration beyond pyproject.toml: the optional C speedups of the core.

``service.core._speedups`` is built when a C compiler and the Python headers are present. Without them
the build goes on (``optional=True``) and ``service.core.parser`` uses its pure-Python scanner, which
gives the same results, about 40 % slower end to end (see README, Performance).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service.core._speedups",
            ["service/core/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
