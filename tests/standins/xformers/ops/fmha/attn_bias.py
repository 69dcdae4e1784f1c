"""Stand-ins for xformers' attention biases: each gives the [M, N] mask of keys seen (bottom-right
or, for LowerTriangularMask, top-left, as xformers aligns them)."""

from dataclasses import dataclass

import torch

from _standin_core import BROKEN, mask


class AttentionBias:
    def seen(self, m, n):
        raise NotImplementedError


class LowerTriangularMask(AttentionBias):
    """Causal, top-left aligned (query i sees keys 0..i)."""

    def seen(self, m, n):
        return mask(m, n, True, top_left=True)


class LowerTriangularFromBottomRightMask(AttentionBias):
    def seen(self, m, n):
        return mask(m, n, True, top_left="top-left" in BROKEN)


@dataclass
class LowerTriangularFromBottomRightLocalAttentionMask(LowerTriangularFromBottomRightMask):
    _window_size: int

    def seen(self, m, n):  # keys i + n - m - window_size + 1 .. i + n - m
        return mask(m, n, True, (self._window_size - 1, 0))


@dataclass
class LocalAttentionFromBottomRightMask(AttentionBias):
    window_left: int
    window_right: int

    def seen(self, m, n):
        return mask(m, n, False, (self.window_left, self.window_right))


@dataclass
class BlockDiagonalMask(AttentionBias):
    q_seqlen: list
    kv_seqlen: list
    causal: bool = False

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(list(q_seqlen), list(q_seqlen if kv_seqlen is None else kv_seqlen))

    def seen(self, m, n):
        ok = torch.zeros(m, n, dtype=torch.bool)
        i = j = 0
        for a, b in zip(self.q_seqlen, self.kv_seqlen):
            ok[i:i + a, j:j + b] = mask(a, b, self.causal)
            i, j = i + a, j + b
        return ok


class BlockDiagonalCausalFromBottomRightMask(BlockDiagonalMask):
    def __post_init__(self):
        for a, b in zip(self.q_seqlen, self.kv_seqlen):
            if a > b:
                raise ValueError(f"Block #? has num_queries={a} and num_keys={b}. Expected num_keys >= num_queries")

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(list(q_seqlen), list(q_seqlen if kv_seqlen is None else kv_seqlen), True)
