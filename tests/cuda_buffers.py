"""Device buffers for the GPU tests through cuda-python: no PyTorch or CuPy needed.

DeviceArray copies a NumPy array to the GPU and exposes it (or a strided view of it) through
__cuda_array_interface__, the way CuPy and PyTorch CUDA tensors do.
"""

from __future__ import annotations

import numpy as np


def _check(result):
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return result[1] if isinstance(result, tuple) and len(result) == 2 else None


class DeviceArray:
    """A device copy of `host`; `view(slices)` gives a strided device view sharing the memory."""

    def __init__(self, host: np.ndarray, *, _base=None, _offset=0, _shape=None, _strides=None, _dtype=None):
        from cuda.bindings import runtime as rt

        self._rt = rt
        self.stream = 1  # what __cuda_array_interface__ reports (1: the legacy default stream)
        if _base is None:
            host = np.ascontiguousarray(host)
            self.dtype = host.dtype
            self.nbytes = host.nbytes
            self.ptr = int(_check(rt.cudaMalloc(max(host.nbytes, 1))))
            _check(rt.cudaMemcpy(self.ptr, host.ctypes.data, host.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
            self._owner = None
            self.shape, self.strides = host.shape, host.strides
        else:
            self._owner = _base
            self.dtype = np.dtype(_dtype) if _dtype is not None else _base.dtype
            self.ptr = _base.ptr + _offset
            self.shape, self.strides = _shape, _strides

    def view(self, make):
        """A device view with the layout `make` gives a host array of the same shape and dtype."""
        host_base = np.zeros(self.shape, self.dtype)  # same layout as the device buffer (C order)
        v = make(host_base)
        offset = v.__array_interface__["data"][0] - host_base.__array_interface__["data"][0]
        return DeviceArray(None, _base=self, _offset=offset, _shape=v.shape, _strides=v.strides)

    def at_byte_offset(self, offset: int, dtype, shape) -> "DeviceArray":
        """A C-contiguous view of `dtype` starting `offset` bytes into this buffer (any offset, odd
        ones included: elements not aligned to their size)."""
        dtype = np.dtype(dtype)
        strides = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) * dtype.itemsize for i in range(len(shape)))
        return DeviceArray(None, _base=self, _offset=offset, _shape=tuple(shape), _strides=strides, _dtype=dtype)

    @property
    def __cuda_array_interface__(self):
        return {"shape": tuple(self.shape), "typestr": self.dtype.str, "data": (self.ptr, False),
                "strides": tuple(self.strides), "version": 3, "stream": self.stream}

    def __del__(self):
        if self._owner is None and getattr(self, "ptr", None):
            self._rt.cudaFree(self.ptr)
            self.ptr = 0


class Stream:
    """A CUDA stream (non-blocking by default: no implicit ordering with the legacy default stream)."""

    def __init__(self, non_blocking: bool = True):
        from cuda.bindings import runtime as rt

        self._rt = rt
        flags = rt.cudaStreamNonBlocking if non_blocking else rt.cudaStreamDefault
        self.handle = _check(rt.cudaStreamCreateWithFlags(flags))

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self):
        _check(self._rt.cudaStreamSynchronize(self.handle))

    def __del__(self):
        if getattr(self, "handle", None) is not None:
            self._rt.cudaStreamDestroy(self.handle)
            self.handle = None


def fill_late(dst: DeviceArray, host: np.ndarray, stream: Stream, scratch: DeviceArray, rounds: int = 200):
    """Queue on `stream` a long chain of device copies (`rounds` copies of half of `scratch` onto its
    other half), then the copy of `host` into `dst`: dst holds its data only once the chain has run,
    long after this returns."""
    from cuda.bindings import runtime as rt

    staged = DeviceArray(np.ascontiguousarray(host))  # on the device now; copied into dst last
    device_synchronize()  # (a copy from pageable memory may return before it lands)
    half = scratch.nbytes // 2
    d2d = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    for _ in range(rounds):
        _check(rt.cudaMemcpyAsync(scratch.ptr + half, scratch.ptr, half, d2d, stream.handle))
    _check(rt.cudaMemcpyAsync(dst.ptr, staged.ptr, host.nbytes, d2d, stream.handle))
    return staged  # keep it alive until the stream has run


def device_synchronize():
    from cuda.bindings import runtime as rt

    _check(rt.cudaDeviceSynchronize())
