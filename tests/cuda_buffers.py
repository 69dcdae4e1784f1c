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

    def __init__(self, host: np.ndarray, *, _base=None, _offset=0, _shape=None, _strides=None):
        from cuda.bindings import runtime as rt

        self._rt = rt
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
            self.dtype = _base.dtype
            self.ptr = _base.ptr + _offset
            self.shape, self.strides = _shape, _strides

    def view(self, make):
        """A device view with the layout `make` gives a host array of the same shape and dtype."""
        host_base = np.zeros(self.shape, self.dtype)  # same layout as the device buffer (C order)
        v = make(host_base)
        offset = v.__array_interface__["data"][0] - host_base.__array_interface__["data"][0]
        return DeviceArray(None, _base=self, _offset=offset, _shape=v.shape, _strides=v.strides)

    @property
    def __cuda_array_interface__(self):
        return {"shape": tuple(self.shape), "typestr": self.dtype.str, "data": (self.ptr, False),
                "strides": tuple(self.strides), "version": 3, "stream": 1}

    def __del__(self):
        if self._owner is None and getattr(self, "ptr", None):
            self._rt.cudaFree(self.ptr)
            self.ptr = 0
