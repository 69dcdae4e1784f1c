"""CUDA stream ordering as the array protocols define it, checked on the host: which stream a kernel
runs on, which producer streams it waits for, and the stream DLPack producers are asked to order
their work before. (tests/test_attention_gpu.py runs the same on a GPU with racing streams.)"""

from __future__ import annotations

import numpy as np
import pytest

import flashparity as fp
from flashparity._tensor import LEGACY_DEFAULT_STREAM, as_view, consumer_stream, producer_waits


class CAI:
    """An object exposing only __cuda_array_interface__ (no memory behind it: nothing reads it)."""

    def __init__(self, shape, stream=None, version=3, ptr=0x10000, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                         "strides": None, "version": version, "stream": stream}


class Exported(Exception):
    pass


class DLPackCuda:
    """A CUDA tensor reachable only through DLPack; records the stream it is asked for, then stops
    the call (there is no device memory behind it)."""

    def __init__(self):
        self.streams = []

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        raise Exported


def test_the_kernel_runs_on_the_stream_q_names():
    assert consumer_stream(CAI((2, 3), stream=0x7f00)) == 0x7f00
    assert consumer_stream(CAI((2, 3), stream=2)) == 2  # the per-thread default stream
    # no stream, an old protocol version, or no CAI at all: the legacy default stream
    assert consumer_stream(CAI((2, 3), stream=None)) == LEGACY_DEFAULT_STREAM
    assert consumer_stream(CAI((2, 3), stream=0x7f00, version=2)) == LEGACY_DEFAULT_STREAM
    assert consumer_stream(np.zeros(3)) == LEGACY_DEFAULT_STREAM
    assert consumer_stream(DLPackCuda()) == LEGACY_DEFAULT_STREAM


def test_producer_streams_other_than_the_kernels_are_waited_for_once():
    run = 0x100
    views = [as_view(CAI((1, 1, 1, 4), stream=s), "x") for s in (run, 0x200, None, 0x200, 0x300)]
    assert producer_waits(run, tuple(views) + (None,)) == [0x200, 0x300]
    assert producer_waits(run, ()) == []


@pytest.mark.parametrize("q_stream", [None, 0x5000])
def test_dlpack_inputs_are_exported_for_the_kernels_stream(q_stream):
    # k comes through DLPack: it is asked for the stream the kernel will run on (q's, or the legacy
    # default stream), never for None, whose meaning PyTorch versions have changed
    k = DLPackCuda()
    q = CAI((1, 4, 2, 8), stream=q_stream)
    with pytest.raises(Exported):
        fp.attention(q, k, k)
    assert k.streams == [q_stream or LEGACY_DEFAULT_STREAM]
    b = DLPackCuda()
    with pytest.raises(Exported):
        fp.parity(CAI((3,), stream=q_stream), b)
    assert b.streams == [q_stream or LEGACY_DEFAULT_STREAM]
    a = DLPackCuda()
    with pytest.raises(Exported):
        fp.parity(a, CAI((3,)))
    assert a.streams == [LEGACY_DEFAULT_STREAM]


class CAIv2AndDLPack(DLPackCuda):
    """Like a PyTorch CUDA tensor: a version-2 __cuda_array_interface__ (no stream) and DLPack."""

    __cuda_array_interface__ = {"shape": (1, 4, 2, 8), "typestr": "<f4", "data": (0x10000, False),
                                "strides": None, "version": 2}


def test_an_interface_without_a_stream_goes_through_dlpack_for_its_ordering():
    # version 2 names no producer stream, so nothing could be waited for: DLPack, asked for the
    # kernel's stream, orders the producer's work before it
    k = CAIv2AndDLPack()
    with pytest.raises(Exported):
        fp.attention(CAI((1, 4, 2, 8), stream=0x9000), k, k)
    assert k.streams == [0x9000]


def test_integer_types_name_streams_too():
    assert consumer_stream(CAI((2,), stream=np.int64(0x7f00))) == 0x7f00
    assert as_view(CAI((2,), stream=np.uint64(0x7f00)), "x").stream == 0x7f00
    assert as_view(CAI((2,), stream="0x7f00"), "x").stream is None  # not an integer: no stream


def test_out_must_be_aligned_to_its_element_size():
    q = np.random.default_rng(0).standard_normal((1, 4, 2, 8)).astype(np.float32)
    raw = np.zeros(q.nbytes + 4, np.uint8)
    out = raw[1:1 + q.nbytes].view(np.float32).reshape(q.shape)  # NumPy allows an odd byte offset
    with pytest.raises(ValueError, match="aligned to its element size"):
        fp.attention(q, q, q, out=out)
