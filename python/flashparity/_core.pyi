"""Stub of the private compiled module ``flashparity._core`` (use the ``flashparity`` package).

Descriptors (``desc``) are ``(pointer, dtype code, shape, byte strides)`` tuples built by
``flashparity._tensor``; dtype codes: 0 float64, 1 float32, 2 float16, 3 bfloat16.
"""

from typing import Any

__version__: str
KERNEL_DIGEST: str  # 40-hex SHA-1 over the kernel sources compiled in
CUDA_COMPILED: bool
FLASH2_MAX_HEAD_DIM: int
HIST_BINS: int
HIST_MIN_EXP: int
HIST_MAX_EXP: int

Desc = tuple[int, int, tuple[int, ...], tuple[int, ...]]

def build_info() -> dict[str, Any]: ...
def simd_level() -> str: ...
def simd_levels() -> list[str]: ...
def _fp_flags() -> list[str]: ...
def _fp_clear_flags() -> None: ...
def _fp_flags_probe() -> list[str]: ...
def num_threads() -> int: ...
def read_probe(a: Desc, b: Desc) -> Any: ...  # contiguous inputs: the fused read limit
def crc32(data: Any, crc: int = 0) -> int: ...  # zlib.crc32 of a C-contiguous buffer (GIL released)
def from_dlpack(capsule: Any, name: str) -> tuple[int, int, list[int], list[int], int, int, Any]: ...
def cuda_pointer_device(ptr: int) -> int: ...

class ParityAccum:  # the accumulated parity state behind ParityStats
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

def parity_host(a: Desc, b: Desc, atol: float = 0.0, rtol: float = 0.0) -> ParityAccum: ...
# test tools: the CUDA parity kernel's algorithm on the CPU for a given grid, and the launcher's grid
def parity_grid_host(a: Desc, b: Desc, atol: float, rtol: float, blocks: int, threads: int) -> ParityAccum: ...
def parity_grid_blocks(n: int, threads: int, resident: int) -> int: ...
def parity_cuda(a: Desc, b: Desc, atol: float = 0.0, rtol: float = 0.0, stream_a: int = 0,
                stream_b: int = 0) -> ParityAccum: ...  # CUDA builds
def parity_cuda_blocks(a: Desc, b: Desc, device: int = 0) -> int: ...  # CUDA builds: parity_cuda's grid

def attention_host(q: Desc, k: Desc, v: Desc, out: int, lse: int, impl: int, scale: float, softcap: float,
                   window_left: int, window_right: int, alibi: tuple[int, int, int] = ...,
                   descale: tuple[int, int] = ...) -> None: ...
def attention_backward_host(q: Desc, k: Desc, v: Desc, out: Desc, dout: Desc, lse: Desc, dq: int, dk: int, dv: int,
                            impl: int, scale: float, softcap: float, window_left: int, window_right: int,
                            alibi: tuple[int, int, int] = ..., *,
                            layout: SeqLayout | None = None) -> None: ...  # dq/dk/dv: contiguous, inputs' dtype;
# layout: a varlen batch (q, out, dout, k, v packed along dim 1 of batch 1, lse [1, heads_q, total_q])

class SeqLayout:  # a varlen batch's or KV cache's layout: host int32 array pointers or 0, by keyword only
    batch: int
    cu_seqlens_q: int  # varlen: [batch + 1] offsets of q's and k's sequences
    cu_seqlens_k: int
    cache_seqlens: int  # KV cache: [batch] lengths
    block_table: int  # paged KV cache: [batch, block_table_stride]
    block_table_stride: int
    def __init__(self, *, batch: int, cu_seqlens_q: int = 0, cu_seqlens_k: int = 0, cache_seqlens: int = 0,
                 block_table: int = 0, block_table_stride: int = 0) -> None: ...

def attention_seqs_host(q: Desc, k: Desc, v: Desc, out: int, lse: int, impl: int, scale: float, softcap: float,
                        window_left: int, window_right: int, alibi: tuple[int, int, int],
                        layout: SeqLayout, descale: tuple[int, int] = ...) -> None: ...
def merge_states_host(o_a: Desc, lse_a: Desc, o_b: Desc, lse_b: Desc, out: int, lse_out: int) -> None: ...

class DeviceArray:  # CUDA builds: owned, C-contiguous device memory
    shape: tuple[int, ...]
    dtype: str
    device: int
    __cuda_array_interface__: dict[str, Any]
    def __dlpack__(self, stream: Any = None) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def to_host_bytes(self) -> bytes: ...
    @staticmethod
    def from_host(ptr: int, dtype: int, shape: list[int], device: int) -> "DeviceArray": ...

def attention_cuda(q: Desc, k: Desc, v: Desc, impl: int, scale: float, softcap: float, window_left: int,
                   window_right: int, want_lse: bool, stream: int = 0, out: int = 0,
                   after: list[int] = ..., alibi: tuple[int, int, int] = ...,
                   alibi_on_host: bool = False,
                   descale: tuple[int, int] = ...) -> tuple[DeviceArray | None, DeviceArray | None]: ...  # CUDA builds
def attention_seqs_cuda(q: Desc, k: Desc, v: Desc, impl: int, scale: float, softcap: float, window_left: int,
                        window_right: int, want_lse: bool, stream: int, out: int, after: list[int],
                        alibi: tuple[int, int, int], alibi_on_host: bool, layout: SeqLayout,
                        out_shape: list[int], lse_shape: list[int],
                        descale: tuple[int, int] = ...) -> tuple[DeviceArray | None, DeviceArray | None]: ...  # CUDA builds
def copy_device_to_host(ptr: int, nbytes: int, after: int = 0) -> bytes: ...  # CUDA builds
def merge_states_cuda(o_a: Desc, lse_a: Desc, o_b: Desc, lse_b: Desc, out_shape: list[int], lse_shape: list[int],
                      stream: int = 0, after: list[int] = ...) -> tuple[DeviceArray, DeviceArray]: ...  # CUDA builds
def cuda_attention_occupancy(device: int) -> list[dict[str, int | str]]: ...  # CUDA builds

# the split-KV math of the CUDA flash2 (attention_math.h), exposed for the CPU tests
def _merge_split_lse(lse_parts: list[float]) -> tuple[float, list[float]]: ...
def _split_spans(begin: int, end: int, n: int) -> list[tuple[int, int]]: ...
def _flash2_split_count(blocks: int, sms: int, key_tiles: int) -> int: ...
def _row_block_key_tiles(r0: int, rows: int, sq: int, sk: int, left: int, right: int, bc: int) -> tuple[int, int]: ...
