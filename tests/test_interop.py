"""Zero-copy interop with PyTorch CPU tensors through DLPack (skipped where torch is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

import flashparity as fp
from parity_oracle import check_against_oracle, random_pair

torch = pytest.importorskip("torch")


def as_numpy(t):
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_torch_tensors_match_oracle(dtype):
    g = torch.Generator().manual_seed(0)
    b = torch.randn(67, 33, generator=g).to(dtype)
    a = (b.double() + 1e-3 * torch.randn(67, 33, generator=g, dtype=torch.float64)).to(dtype)
    for make in (lambda t: t, lambda t: t.T, lambda t: t[::2, 1:], lambda t: t.flip(0)):
        ta, tb = make(a), make(b)
        stats = fp.parity(ta, tb, atol=1e-3)
        check_against_oracle(stats, as_numpy(ta), as_numpy(tb), 1e-3)


def test_torch_mixed_with_numpy():
    rng = np.random.default_rng(0)
    a, b = random_pair(rng, (100,), "float16", "float32")
    stats = fp.parity(torch.from_numpy(a), b)
    check_against_oracle(stats, a, b)


def test_torch_integer_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="a has dtype int64"):
        fp.parity(torch.arange(4), torch.ones(4))
