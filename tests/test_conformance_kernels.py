"""flashparity's own kernels through the conformance suite, at every CPU level (the emulated CI
stages run this file; tests/test_conformance.py, the suite's logic, runs natively)."""

from __future__ import annotations

import json

import pytest

from flashparity.conformance import conformance

QUICK_FEATURES = {"mha", "gqa", "mqa", "causal", "window", "softcap", "alibi", "masked-rows", "strided", "stride0",
                  "poisoned", "extreme", "determinism"}


@pytest.mark.parametrize("kernel", ["flashparity:flash2", "flashparity:naive"])
def test_builtin_kernels_pass_the_quick_suite(kernel):
    if kernel == "flashparity:flash2" and __import__("flashparity").build_info()["simd"] == "neonbf16":
        pytest.skip("flash2's bfloat16 LSE at the neonbf16 level is an open finding (the xfail below)")
    rep = conformance(kernel)
    assert rep.ok, str(rep)
    assert rep.counts() == {"pass": 36, "fail": 0, "unsupported": 0, "error": 0}
    assert set(rep.summary()) == QUICK_FEATURES and rep.kernel_source.startswith(kernel + "@")
    for r in rep.cases:  # every rule reported as a ratio; the LSE is checked (these kernels return one)
        assert set(r.ratios) == {"max", "mean", "cosine", "lse"} and all(x <= 1 for x in r.ratios.values()), r
    det = [r for r in rep.cases if r.case.kind == "determinism"]
    assert len(det) == 3 and all(r.deterministic for r in det)
    body = json.loads(json.dumps(rep.to_dict()))
    assert body["ok"] and len(body["cases"]) == 36 and body["cases"][0]["verdict"] == "pass"


# A finding of the conformance suite (2026-12-06, qemu-aarch64 -cpu max, the neonbf16 level): flash2's
# bfloat16 LSE is off by up to ~1e-3 against the float64 gold (the naive kernel's: 5e-7), while its
# outputs pass every rule: the BFDOT score path loses precision in the scores (q·scale rounded to
# bfloat16 before the dot products, or BFDOT's own sums). Open: to be fixed in the kernel.
@pytest.mark.skipif(__import__("flashparity").build_info()["simd"] != "neonbf16",
                    reason="observed at the neonbf16 level (BFDOT)")
@pytest.mark.xfail(reason="flash2's bfloat16 LSE at the neonbf16 level: up to ~1e-3 off (open finding)")
def test_flash2_bfloat16_lse_at_the_bf16_dot_product_level():
    rep = conformance("flashparity:flash2", dtypes=["bfloat16"])
    assert rep.ok, str(rep)
