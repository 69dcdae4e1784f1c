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
