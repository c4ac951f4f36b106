"""Build configuration beyond pyproject.toml: the optional C speedups of the core.

``service.core._speedups`` (the scanner of clean payloads and the compiled record path) is built when
a C compiler and the Python headers are present. Without them the build goes on (``optional=True``)
and the core takes its Python path, which gives the same results byte for byte, slower (see
docs/performance.md).
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
