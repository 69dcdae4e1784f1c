"""Stub of the private compiled module ``flashparity._core`` (use the ``flashparity`` package)."""

from typing import Any

__version__: str
KERNEL_DIGEST: str  # 40-hex SHA-1 over the kernel sources compiled in
CUDA_COMPILED: bool

def build_info() -> dict[str, Any]: ...
def simd_level() -> str: ...
