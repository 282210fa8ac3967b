"""Build of the optional compiled drift kernel; everything else is declared in pyproject.toml.

Without a C compiler the extension is skipped (``optional=True``) and ckptkit uses its numpy
kernels, which compute the same sums more slowly.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

# Reassociation lets the compiler vectorise the sums, and expanding their variables when unrolling
# gives each several partial sums; finite-math is left off, since the kernel must see NaN and Inf to
# hand such chunks to the exact path. The last two flags are GCC's: other compilers get the rest.
FAST_FLAGS = [
    "-O3",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-fassociative-math",
    "-funroll-loops",
    "-fvariable-expansion-in-unroller",
]


class BuildWithFallbackFlags(build_ext):
    """Tries the kernel with all of FAST_FLAGS, then with fewer, then with the compiler's defaults."""

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "msvc":
            super().build_extension(ext)
            return
        for flags in (FAST_FLAGS, FAST_FLAGS[:-2], []):
            ext.extra_compile_args = flags
            try:
                super().build_extension(ext)
                return
            except CompileError:
                if not flags:
                    raise


setup(
    ext_modules=[Extension("ckptkit._fused", ["ckptkit/_fused.c"], optional=True)],
    cmdclass={"build_ext": BuildWithFallbackFlags},
)
