"""flashparity: does the fast attention kernel compute the same function as its reference?

Public API (see the README and SPEC): :func:`build_info`; the fused parity reductions
:func:`parity` (-> :class:`ParityStats`), :func:`max_abs_diff`, :func:`cosine_sim`; the
attention forward :func:`attention` (naive and flash2, on the CPU and the GPU), its backward
:func:`attention_backward` (on the CPU) and :func:`merge_attention_states`; serving layouts :func:`attention_varlen`
(its backward :func:`attention_varlen_backward`, on the CPU) and :func:`attention_kvcache` (paged); :func:`conformance` of any attention kernel (adapters in
:mod:`flashparity.kernels.adapters`) against the float64 oracle; the
classifiers in :mod:`flashparity.classify`; parity over torch.distributed ranks in
:mod:`flashparity.distributed`. The compiled core is the private module ``flashparity._core``.
"""

from __future__ import annotations

from . import classify, distributed
from ._build import build_info
from ._core import __version__
from .kernels.attention import UnsupportedHeadDimError, attention, attention_backward, merge_attention_states
from .kernels.conformance import ConformanceReport, conformance
from .kernels.kernel_parity import kernel_parity
from .kernels.serving import attention_kvcache, attention_varlen, attention_varlen_backward
from .models.modules import ModuleReport, compare_modules, dump
from .parity import ParityStats, assert_parity, cosine_sim, max_abs_diff, parity

__all__ = [
    "__version__",
    "build_info",
    "classify",
    "distributed",
    "parity",
    "ParityStats",
    "max_abs_diff",
    "cosine_sim",
    "attention",
    "attention_backward",
    "attention_varlen",
    "attention_varlen_backward",
    "attention_kvcache",
    "merge_attention_states",
    "UnsupportedHeadDimError",
    "kernel_parity",
    "conformance",
    "ConformanceReport",
    "assert_parity",
    "compare_modules",
    "ModuleReport",
    "dump",
]
