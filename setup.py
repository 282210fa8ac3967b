"""Build of the optional compiled drift kernel; everything else is declared in pyproject.toml.

Without a C compiler the extension is skipped (``optional=True``) and ckptkit uses its numpy
kernels, which compute the same sums more slowly.
"""

import sys

from setuptools import Extension, setup

# Reassociation lets the compiler vectorise the sums; finite-math is left off, since the kernel
# must see NaN and Inf to hand such chunks to the exact path.
FLAGS = (
    []
    if sys.platform == "win32"
    else [
        "-O3",
        "-funroll-loops",
        "-fvariable-expansion-in-unroller",  # several partial sums per reduction
        "-fno-math-errno",
        "-fno-trapping-math",
        "-fno-signed-zeros",
        "-fassociative-math",
    ]
)

setup(ext_modules=[Extension("ckptkit._fused", ["ckptkit/_fused.c"], extra_compile_args=FLAGS, optional=True)])
