"""A small decoder-only transformer for the module-comparison tests: random weights, nothing
downloaded, three attention implementations (an explicit softmax, torch's SDPA, flashparity's
differentiable attention)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, impl: str):
        super().__init__()
        self.heads, self.impl = heads, impl
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x):
        b, s, d = x.shape
        h = self.heads

        def split(t):
            return t.view(b, s, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.impl == "flashparity":  # (BSHD views of the same tensors; differentiable)
            import flashparity.torch

            y = flashparity.torch.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                            causal=True).transpose(1, 2)
        elif self.impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
            mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            y = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, s, d))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, impl: str):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), Attention(d, heads, impl)
        self.norm2, self.mlp = nn.LayerNorm(d), MLP(d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 97, d: int = 64, heads: int = 4, layers: int = 4, impl: str = "eager"):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, heads, impl) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return {"logits": self.head(self.norm(x)), "hidden": x}


def pair(seed: int = 0, dtype=torch.float32, impl_b: str = "sdpa", **kw):
    """(eager, impl_b) with the same random weights, in `dtype`, and a batch of token ids."""
    torch.manual_seed(seed)
    a = TinyTransformer(impl="eager", **kw)
    for p in a.parameters():  # (LayerNorm starts at 1/0: give it random values too)
        p.data.add_(0.1 * torch.randn_like(p))
    b = TinyTransformer(impl=impl_b, **kw)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 97, (2, 33), generator=torch.Generator().manual_seed(seed + 1))
    return a.to(dtype).eval(), b.to(dtype).eval(), ids
