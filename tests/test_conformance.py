"""fp.conformance: built-in adapters pass their suites; PyTorch SDPA is judged through the sdpa
convention; deliberately broken kernels are each caught by the cases meant for them and by no
unrelated case; unsupported cases are listed, never failures."""

from __future__ import annotations

import dataclasses
import json
import math
import types

import numpy as np
import pytest

import flashparity as fp
from flashparity.kernels import adapters
from emulation import emulated_cpu
from flashparity.kernels.conformance import Case, conformance, suite_cases

# (the conformance logic is Python around kernels that other tests run at every level: an emulated
# CPU runs tests/test_conformance_kernels.py, the built-in kernels through the suite, and not this)
pytestmark = pytest.mark.skipif(emulated_cpu(), reason="pure-Python conformance logic: run natively")


def test_suites_and_cases():
    quick = suite_cases("quick")
    assert len(quick) == 42 and len(set(quick)) == 42
    default = suite_cases("default", dtypes=["float16"])
    assert {c.head_dim for c in default} >= {32, 40, 59, 64, 80, 96, 111, 128, 160, 192, 224, 256}
    assert {(c.seqlen_q, c.seqlen_k) for c in default} >= {(1, 1), (1, 239), (113, 203), (239, 1), (512, 256)}
    assert len(suite_cases("full", dtypes=["bfloat16"])) > 500
    with pytest.raises(ValueError, match="suite must be one of quick, default, full, got 'big'"):
        suite_cases("big")
    with pytest.raises(ValueError, match="dtypes must be among float32, float16, bfloat16, float8_e4m3fn, float8_e5m2, got 'int8'"):
        suite_cases("quick", dtypes=["int8"])
    with pytest.raises(ValueError, match=r"heads_q \(6\) must be a multiple of heads_kv \(4\)"):
        Case(heads_q=6, heads_kv=4)
    with pytest.raises(ValueError, match="masked-rows case is causal with seqlen_q > seqlen_k"):
        Case(kind="masked-rows")
    c = Case(kind="strided", dtype="bfloat16", head_dim=40)
    x = c.inputs()
    assert not x["q"].flags.c_contiguous and x["q"].shape == (1, 64, 4, 40) and x["q"].dtype.name == "bfloat16"
    assert Case(kind="stride0", heads_kv=2).inputs()["k"].strides[2] == 0


def test_sdpa_math_backend():
    pytest.importorskip("torch")
    rep = conformance("torch-sdpa:math")
    assert rep.kernel_source.startswith("torch@") and rep.kernel_source.endswith(":sdpa-math")
    by = {}
    for r in rep.cases:
        by.setdefault(r.verdict, []).append(r)
    # SDPA has no softcap and no varlen or paged call: listed, not failed
    assert {r.reason for r in by["unsupported"]} == {"softcap", "varlen batches", "paged KV caches"}
    assert all(r.case.softcap or r.case.kind in ("varlen", "paged") for r in by["unsupported"])
    # SDPA lets NaN in keys a row cannot see reach that row (0 · NaN in P·V; NaN + -inf in the scores):
    # a finding the poisoned cases report; every other case passes
    assert {r.case.kind for r in by["fail"]} == {"poisoned"}
    assert all("of k, which rows 0..92 cannot see" in r.reason and "of v," in r.reason for r in by["fail"])
    assert len(by["pass"]) == 30 and not rep.ok


def test_sdpa_cpu_flash_backend_runs_or_is_unsupported():
    pytest.importorskip("torch")
    rep = conformance("torch-sdpa:flash", dtypes=["float32"])
    # (the CPU flash backend takes explicit masks too: everything runs but softcap, which SDPA lacks)
    verdicts = {r.case.name: r.verdict for r in rep.cases}
    assert {n for n, v in verdicts.items() if v == "unsupported"} == {
        "float32-b1-q113-k203-h4x4-d80-softcap30", "float32-seqs1x1_37x61_90x17_8x128-h4x2-d64-causal-varlen",
        "float32-q1-k1_47_128_200-page16-h8x2-d128-paged"}
    assert {n for n, v in verdicts.items() if v == "fail"} == {"float32-b1-q96-k96-h4x4-d64-causal-poisoned"}


# ---- deliberately broken kernels ------------------------------------------------------------------------


def _case_of(q, k, causal, window):
    return types.SimpleNamespace(seqlen_q=q.shape[1], seqlen_k=k.shape[1], causal=causal, window=tuple(window))


def make_kernel(defect: str | None):
    """A bshd-numpy kernel (flashparity's naive kernel underneath) with one defect."""
    calls = [0]

    def kernel(q, k, v, *, causal, softmax_scale, window_size=(-1, -1), softcap=0.0, alibi_slopes=None):
        kw = dict(impl="naive", causal=causal, window=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                  softmax_scale=softmax_scale, return_lse=True)
        sq, sk = q.shape[1], k.shape[1]
        if defect == "scale":
            kw["softmax_scale"] = softmax_scale * 1.01
        elif defect == "drop-last-key":
            k, v = k[:, :-1], v[:, :-1]
        elif defect == "top-left-causal" and causal and sq != sk and tuple(window_size) == (-1, -1):
            if sq > sk:  # row i sees keys 0..i: a bottom-right window reaching sq - sk keys further
                kw.update(causal=False, window=(-1, sq - sk))
            else:  # keys past seqlen_q are seen by no row
                k, v = k[:, :sq], v[:, :sq]
        elif defect == "window-off-by-one" and tuple(window_size) != (-1, -1):
            left, right = window_size
            kw["window"] = (left + 1, right) if left >= 0 else (left, right + 1)
        out, lse = fp.attention(q, k, v, **kw)
        if defect == "base2-lse":
            lse = lse / np.float32(math.log(2))
        elif defect == "nan-leak":  # 0 · (a sum over every key) added: NaN anywhere in v reaches every row
            with np.errstate(invalid="ignore"):
                leak = np.asarray(v, np.float64).sum(axis=(1, 2, 3))[:, None, None, None] * 0.0
                out = (out.astype(np.float64) + leak).astype(out.dtype)
        elif defect == "nondeterministic":
            calls[0] += 1
            if calls[0] % 2 == 0:  # one ulp up in the last element (the last row sees keys in every case)
                flat = out.reshape(-1)
                flat[-1] = np.nextafter(flat[-1].astype(np.float32), np.float32(np.inf)).astype(out.dtype) \
                    if out.dtype != np.float32 else np.nextafter(flat[-1], np.float32(np.inf))
        elif defect == "bf16-accumulation" and q.dtype.name == "bfloat16":
            out = _bf16_accumulated(q, k, v, causal, softmax_scale, window_size, out.dtype)
        return out, lse

    return kernel


def _bf16_accumulated(q, k, v, causal, scale, window, dtype):
    """P·V summed key by key in bfloat16 (every partial sum rounded), as a kernel without a float32
    accumulator would."""
    rep = q.shape[2] // k.shape[2]
    q32, k32, v32 = (np.asarray(x, np.float32) for x in (q, k, v))
    k32, v32 = np.repeat(k32, rep, axis=2), np.repeat(v32, rep, axis=2)
    s = np.einsum("bthd,bshd->bhts", q32, k32) * np.float32(scale)
    seen = adapters.visible(_case_of(q, k, causal, window))
    s = np.where(seen, s, -np.inf)
    m = s.max(-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        p = np.exp(s - np.where(np.isfinite(m), m, 0))
        p = np.where(seen.any(-1)[:, None], p / p.sum(-1, keepdims=True), 0).astype(np.float32)
    acc = np.zeros(q.shape[:1] + (q.shape[2], q.shape[1], q.shape[3]), np.float32)  # [b, h, t, d]
    for j in range(k.shape[1]):
        term = (p[..., j:j + 1] * v32[:, j][:, :, None, :]).astype(dtype).astype(np.float32)
        acc = (acc + term).astype(dtype).astype(np.float32)
    return acc.transpose(0, 2, 1, 3).astype(dtype)


CAPS = {"window": True, "softcap": True, "alibi": True, "lse": True}


def failing(defect: str) -> list:
    rep = conformance(make_kernel(defect), convention="bshd-numpy", capabilities=CAPS)
    # (the bshd conventions take dense batches: the varlen and paged cases are listed as unsupported)
    assert {r.case.kind for r in rep.cases if r.verdict == "unsupported"} == {"varlen", "paged"}
    return [r for r in rep.cases if r.verdict in ("fail", "error")]


def test_the_sound_kernel_passes():
    rep = conformance(make_kernel(None), convention="bshd-numpy", capabilities=CAPS)
    assert rep.ok, str(rep)
    assert rep.kernel_source.startswith("python:test_conformance.make_kernel.<locals>.kernel@sha256:")


@pytest.mark.parametrize("defect,related", [
    ("scale", lambda c: True),  # (with one key the output is v, but the LSE shows the scale)
    ("drop-last-key", lambda c: True),
    ("top-left-causal", lambda c: c.causal and c.seqlen_q != c.seqlen_k),
    ("window-off-by-one", lambda c: c.window != (-1, -1)),
    ("base2-lse", lambda c: True),
    ("nan-leak", lambda c: c.kind == "poisoned"),
    ("nondeterministic", lambda c: c.kind in ("determinism", "poisoned")),  # (both compare two calls)
    ("bf16-accumulation", lambda c: c.dtype == "bfloat16"),
])
def test_each_broken_kernel_is_caught_by_its_cases_only(defect, related):
    bad = failing(defect)
    assert bad, f"{defect} was not caught"
    unrelated = [r.case.name for r in bad if not related(r.case)]
    assert not unrelated, f"{defect} failed unrelated cases: {unrelated}"
    if defect == "base2-lse":
        assert all("lse:" in r.reason for r in bad)
    if defect == "nan-leak":
        assert all("which rows 0.." in r.reason for r in bad)
    if defect == "nondeterministic":
        assert any(r.case.kind == "determinism" and r.deterministic is False for r in bad)


def test_fully_masked_rows_must_give_zero_and_minus_infinity():
    def nan_rows(q, k, v, *, causal, softmax_scale):  # NaN where no key is seen (0/0), like old SDPA
        out, lse = fp.attention(q, k, v, impl="naive", causal=causal, softmax_scale=softmax_scale, return_lse=True)
        seen = adapters.visible(_case_of(q, k, causal, (-1, -1))).any(-1)
        out[:, ~seen] = np.nan
        lse[:, :, ~seen] = np.nan
        return out, lse

    rep = conformance(nan_rows, convention="bshd-numpy", capabilities={"lse": True})
    bad = [r for r in rep.cases if r.verdict == "fail"]
    assert bad and {r.case.kind for r in bad} == {"masked-rows"}
    assert all("NaN/inf outputs where the oracle is finite" in r.reason for r in bad)


# ---- unsupported, errors, bad arguments -------------------------------------------------------------------


def test_unsupported_cases_are_listed_with_their_reasons():
    calls = []

    def minimal(q, k, v, *, causal, softmax_scale):
        calls.append(1)
        if q.shape[-1] > 128:
            raise NotImplementedError("head_dim > 128")
        return fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale)

    rep = conformance(minimal, convention="bshd-numpy", suite="default", dtypes=["float16"])
    by = {}
    for r in rep.cases:
        by.setdefault(r.verdict, []).append(r)
    assert "fail" not in by and "error" not in by and rep.ok
    reasons = {r.reason for r in by["unsupported"]}
    assert {"sliding window", "softcap", "ALiBi", "head_dim > 128"} <= reasons
    assert "unsupported (" in str(rep)


def test_a_crash_is_an_error_and_a_wrong_shape_a_failure():
    def crash(q, k, v, *, causal, softmax_scale):
        raise RuntimeError("CUDA error: illegal memory access")

    rep = conformance(crash, convention="bshd-numpy", dtypes=["float32"])
    assert not rep.ok and {r.verdict for r in rep.cases} == {"error", "unsupported"}  # (window, softcap, ALiBi)
    assert rep.counts()["error"] == 9
    assert "RuntimeError: CUDA error: illegal memory access" in rep.cases[0].reason

    def transposed(q, k, v, *, causal, softmax_scale):
        return np.ascontiguousarray(fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale).swapaxes(1, 2))

    rep = conformance(transposed, convention="bshd-numpy", suite=[Case(seqlen_q=5, seqlen_k=7)])
    assert rep.cases[0].verdict == "fail" and "output shape (1, 4, 5, 64), expected (1, 5, 4, 64)" in rep.cases[0].reason


def test_kernels_named_by_module_and_bad_arguments():
    rep = conformance("flashparity.kernels.attention:attention", convention="bshd-numpy", suite=[Case()],
                      capabilities={"lse": False})
    assert rep.ok and rep.kernel.startswith("python:flashparity.kernels.attention.attention")
    with pytest.raises(ValueError, match="needs convention="):
        conformance(lambda q, k, v: q)
    with pytest.raises(ValueError, match="convention must be one of bshd, bshd-numpy, fa2, fa2-varlen, fa2-kvcache, "
                                         "fa3, fa3-varlen, fa3-kvcache, sdpa, flashinfer, xformers, jax, got 'bhsd'"):
        conformance(lambda q, k, v: q, convention="bhsd")
    with pytest.raises(ValueError, match="unknown capabilities 'dropout'"):
        conformance(lambda q, k, v: q, convention="bshd", capabilities={"dropout": True})
    with pytest.raises(ValueError, match=r"capabilities\['head_dims'\] must be a list of integers >= 1 or None"):
        conformance(lambda q, k, v: q, convention="bshd", capabilities={"head_dims": [64, "128"]})
    with pytest.raises(ValueError, match=r"capabilities\['page_size_multiple'\] must be an integer >= 1, got 0"):
        conformance(lambda q, k, v: q, convention="bshd", capabilities={"page_size_multiple": 0})
    with pytest.raises(ValueError, match="torch-sdpa backend must be one of math, flash, efficient, cudnn"):
        conformance("torch-sdpa:fast")
    with pytest.raises(ValueError, match="kernel must be a built-in adapter"):
        conformance("flash-attn-9")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz.sub'"):
        conformance("no_such_module_xyz.sub:fn", convention="bshd")


# ---- conventions, against stand-ins that follow them exactly ---------------------------------------------


def test_fa2_convention_against_a_stand_in():
    torch = pytest.importorskip("torch")
    seen = {}

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                        alibi_slopes=None, deterministic=False, return_attn_probs=False):
        """flash_attn's signature and conventions (BSHD torch tensors, bottom-right causal, natural-log
        LSE [batch, heads, seqlen_q] as the second of three results), on flashparity's kernel."""
        assert isinstance(q, torch.Tensor) and dropout_p == 0.0
        seen.setdefault("window", set()).add(tuple(window_size))
        arrays = [adapters.from_torch(x) for x in (q, k, v)]
        out, lse = fp.attention(*arrays, impl="flash2", causal=causal, window=window_size, softcap=softcap,
                                alibi_slopes=None if alibi_slopes is None else alibi_slopes.numpy(),
                                softmax_scale=softmax_scale, return_lse=True)
        out = adapters.to_torch(out)
        return (out, torch.from_numpy(lse), None) if return_attn_probs else out

    rep = conformance(flash_attn_func, convention="fa2")
    assert rep.ok, str(rep)
    c = rep.counts()
    # float32 (FA2 runs float16 and bfloat16 only), and flash_attn_func takes no varlen or paged batch
    assert c["fail"] == 0 and c["unsupported"] == 14 + 2 * 2
    assert all("lse" in r.ratios for r in rep.cases if r.verdict == "pass")
    assert (16, 0) in seen["window"]


def test_sdpa_convention_with_pytorchs_own_function():
    torch = pytest.importorskip("torch")
    rep = conformance(torch.nn.functional.scaled_dot_product_attention, convention="sdpa", dtypes=["float32"])
    builtin = conformance("torch-sdpa", dtypes=["float32"])
    assert [r.verdict for r in rep.cases] == [r.verdict for r in builtin.cases]
    assert rep.kernel_source.startswith("python:torch")


# ---- the CLI ----------------------------------------------------------------------------------------------


def run_cli(argv, capsys):
    from flashparity.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_kernel_parity_of_any_kernel_keeps_apr_body(capsys):
    body = fp.kernel_parity("flashparity.kernels.attention:attention", convention="bshd-numpy", dtype="float16",
                            seqlen_q=37, causal=True)
    assert body["kernel"] == body["attn_impl"] == "python:flashparity.kernels.attention.attention"
    assert body["kernel_source"].startswith("python:flashparity.kernels.attention.attention@sha256:")
    assert body["fa2_rule_ok"] and body["fallback"] is None and body["seqlen_q"] == 37
    code, out, _ = run_cli(["kernel", "parity", "--impl", "flashparity.kernels.attention:attention", "--convention",
                            "bshd-numpy", "--check", "--json"], capsys)
    assert code == 0 and json.loads(out)["check"]["ok"]
    # a sweep runs the cases the adapter takes (varlen and paged batches, FP8 with unit descales)
    sweep = fp.kernel_parity("flashparity:flash2", sweep=True)
    assert len(sweep["cases"]) == 46 and sweep["unsupported"] == [] and sweep["fa2_rule_ok"]
    assert sum(c["varlen"] is not None for c in sweep["cases"]) == 8
    with pytest.raises(ValueError, match="for third-party kernels"):
        fp.kernel_parity("flash2", convention="fa2")


def test_kernel_parity_sweep_lists_what_a_kernel_does_not_take():
    pytest.importorskip("torch")
    sweep = fp.kernel_parity("torch-sdpa:math", sweep=True)  # (no FP8, no varlen or paged batches in SDPA)
    assert len(sweep["cases"]) == 30 and len(sweep["unsupported"]) == 16 and sweep["fa2_rule_ok"]
    assert {u["reason"].split(": ")[-1] for u in sweep["unsupported"]} >= {"varlen batches", "paged KV caches"}


def test_kernel_parity_suite_and_usage_errors(capsys):
    code, out, _ = run_cli(["kernel", "parity", "--impl", "flash2", "--suite", "quick", "--dtype", "bfloat16",
                            "--json"], capsys)
    body = json.loads(out)
    assert code == 0 and body["ok"] and body["counts"]["pass"] == 14 and body["kernel"] == "flashparity:flash2"
    code, out, _ = run_cli(["kernel", "parity", "--impl", "flash2", "--suite", "quick", "--dtype", "float32"], capsys)
    assert code == 0 and out.startswith("conformance of flashparity:flash2") and "determinism" in out

    def bad(q, k, v, *, causal, softmax_scale):
        return fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale * 1.01)

    import sys

    mod = types.ModuleType("fp_test_bad_kernel")
    mod.bad = bad
    sys.modules["fp_test_bad_kernel"] = mod
    try:
        code, out, _ = run_cli(["kernel", "parity", "--impl", "fp_test_bad_kernel:bad", "--convention", "bshd-numpy",
                                "--suite", "quick", "--dtype", "float32"], capsys)
        assert code == 1 and "FAIL float32-" in out
        code, out, _ = run_cli(["kernel", "parity", "--impl", "fp_test_bad_kernel:bad", "--convention", "bshd-numpy",
                                "--suite", "quick", "--dtype", "float32", "--report-only"], capsys)
        assert code == 0
    finally:
        del sys.modules["fp_test_bad_kernel"]
    for argv, needle in [
        (["--impl", "flash-attn-9"], "kernel must be a built-in adapter"),
        (["--impl", "nosuch_pkg_q.mod:f", "--convention", "bshd"], "cannot import module 'nosuch_pkg_q.mod'"),
        (["--impl", "flash2", "--convention", "fa2"], "--convention is for a package.module:function kernel"),
        (["--impl", "flash2", "--suite", "quick", "--check"], "--check and --sweep are for single"),
        (["--impl", "flash2", "--suite", "quick", "--dtype", "float64"], "--suite runs float32, float16, bfloat16"),
        (["--impl", "flashparity.kernels.attention:attention", "--convention", "bhsd"], "convention must be one of bshd,"),
    ]:
        code, out, err = run_cli(["kernel", "parity", *argv], capsys)
        assert code == 2 and needle in err and "Traceback" not in err, (argv, err)


def test_kernels_lists_the_adapters(capsys):
    code, out, _ = run_cli(["kernels"], capsys)
    assert code == 0 and "flashparity:flash2" in out and "torch-sdpa:math" in out and "--convention" in out
    code, out, _ = run_cli(["kernels", "--json"], capsys)
    body = json.loads(out)
    assert [a["name"] for a in body["adapters"]] == [*adapters.ADAPTERS, "hub:<org>/<repo>@<commit>"]
    assert body["conventions"] == ["bshd", "bshd-numpy", "fa2", "fa2-varlen", "fa2-kvcache", "fa3", "fa3-varlen",
                                   "fa3-kvcache", "sdpa", "flashinfer", "xformers", "jax"]


# ---- adopting the suite: flashparity.testing and the pytest plugin -------------------------------------------


def _pytest(args, cwd, autoload=False):
    import os
    import subprocess

    from emulation import python_command

    env = dict(os.environ)
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        args = ["-p", "flashparity.pytest_plugin", *args]
    return subprocess.run([*python_command(), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_case_check_in_a_kernels_own_suite(tmp_path):
    (tmp_path / "test_mine.py").write_text(
        "import pytest\n"
        "import flashparity as fp\n"
        "from flashparity.testing import conformance_cases\n\n"
        "def mine(q, k, v, *, causal, softmax_scale):\n"
        "    return fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale)\n\n"
        "def off(q, k, v, *, causal, softmax_scale):\n"
        "    return fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale * 1.01)\n\n"
        "@pytest.mark.parametrize('case', conformance_cases('quick', dtypes=['float16']), ids=str)\n"
        "def test_mine(case):\n"
        "    case.check(mine, convention='bshd-numpy')\n\n"
        "def test_off():\n"
        "    conformance_cases('quick', dtypes=['float16'])[2].check(off, convention='bshd-numpy')\n")
    res = _pytest([], tmp_path)
    assert "1 failed, 9 passed, 5 skipped" in res.stdout, res.stdout + res.stderr
    assert "unsupported: sliding window" in res.stdout
    assert "AssertionError: float16-b1-q113-k203-h4x4-d64-causal: fail: max|out - gold|" in res.stdout
    assert "ratios (error / bound, <= 1 passes): max" in res.stdout


def test_the_pytest_plugin_runs_the_suite_as_items(tmp_path):
    res = _pytest(["--fp-kernel", "flashparity:naive", "--fp-dtype", "bfloat16"], tmp_path)
    assert res.returncode == 0 and "14 passed" in res.stdout, res.stdout + res.stderr
    (tmp_path / "kern.py").write_text(
        "import flashparity as fp\n"
        "def off(q, k, v, *, causal, softmax_scale, window_size=(-1, -1)):\n"
        "    return fp.attention(q, k, v, causal=causal, window=window_size, softmax_scale=softmax_scale * 1.01)\n")
    res = _pytest(["--fp-kernel", "kern:off", "--fp-convention", "bshd-numpy", "--fp-dtype", "float32",
                   "--fp-capabilities", '{"window": true}', "-k", "window or d32"], tmp_path)
    assert res.returncode == 1 and "2 failed" in res.stdout and "python:kern.off: float32-" in res.stdout, res.stdout
    res = _pytest(["--fp-kernel", "kern:off"], tmp_path)
    assert res.returncode == 4 and "--fp-kernel: a callable kernel needs convention=" in res.stderr, res.stderr
    res = _pytest([], tmp_path)  # (without --fp-kernel the plugin adds nothing)
    assert res.returncode == 5, res.stdout


def test_the_plugin_is_registered_as_an_entry_point():
    import importlib.metadata

    try:
        importlib.metadata.distribution("flashparity")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("flashparity is on the path without its distribution metadata (a copied package)")
    eps = importlib.metadata.entry_points(group="pytest11")
    assert any(ep.name == "flashparity" and ep.value == "flashparity.pytest_plugin" for ep in eps)


# ---- FlexAttention ------------------------------------------------------------------------------------------


def test_flex_attention_eager():
    pytest.importorskip("torch")
    rep = conformance("torch-flex", dtypes=["float32"])
    assert rep.kernel_source.endswith(":flex-eager") and any("eagerly" in n for n in rep.notes)
    by = {r.verdict: [] for r in rep.cases}
    for r in rep.cases:
        by[r.verdict].append(r)
    # every feature runs (masks as block masks, softcap and ALiBi as a score_mod) and its LSE is
    # checked; NaN in v of keys a row cannot see reaches the row, as with SDPA
    assert len(by["pass"]) == 11 and all("lse" in r.ratios for r in by["pass"])
    assert [r.case.kind for r in by["fail"]] == ["poisoned"] and "of v," in by["fail"][0].reason


def test_flex_attention_compiled():
    pytest.importorskip("torch")
    case = Case(dtype="bfloat16", seqlen_q=113, seqlen_k=203, heads_q=4, heads_kv=2, causal=True, softcap=30.0,
                alibi=True)
    rep = conformance("torch-flex:compiled", suite=[case])
    r = rep.cases[0]
    assert r.verdict == "pass", r.reason[:2000]
    assert "lse" not in r.ratios and rep.kernel_source.endswith(":flex-compiled")  # (no LSE compiled on a CPU)


def test_kernel_parity_suite_writes_the_html_report(tmp_path, capsys):
    page = tmp_path / "r.html"
    code, out, err = run_cli(["kernel", "parity", "--impl", "naive", "--suite", "quick", "--dtype", "float16",
                              "--html", str(page), "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"]
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "flashparity:naive" in text and "<script" not in text
    assert conformance("flashparity:naive", suite=[Case()]).to_html().count("<table") >= 2
    code, _, err = run_cli(["kernel", "parity", "--html", str(page)], capsys)
    assert code == 2 and "--html writes the conformance report of --suite" in err


def test_a_kernel_that_writes_its_inputs_or_reuses_its_output_buffer():
    def scribbler(q, k, v, *, causal, softmax_scale):
        out = fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale)
        q[..., 0] = 0  # (the gold was taken before: the output is still judged on the true inputs)
        return out

    rep = conformance(scribbler, convention="bshd-numpy", suite=[Case(seqlen_q=9, seqlen_k=11)])
    assert rep.cases[0].verdict == "fail" and "the kernel wrote into its input q" in rep.cases[0].reason

    buffer = {}

    def reuses(q, k, v, *, causal, softmax_scale):  # one output buffer, overwritten by every call
        out = fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale)
        buf = buffer.setdefault("out", np.empty_like(out))
        buffer["calls"] = buffer.get("calls", 0) + 1
        buf[...] = out
        if buffer["calls"] % 2 == 0:
            buf.reshape(-1)[0] += np.float32(1e-3)
        return buf

    rep = conformance(reuses, convention="bshd-numpy", suite=[Case(seqlen_q=9, seqlen_k=11, kind="determinism")])
    assert rep.cases[0].verdict == "fail" and rep.cases[0].deterministic is False


# ---- JAX ----------------------------------------------------------------------------------------------------


JAX_RUN = """
import json, jax, flashparity as fp
rep = fp.conformance("jax", dtypes=["float32", "bfloat16"])
mine = fp.conformance(jax.nn.dot_product_attention, convention="jax", dtypes=["float32"])
print(json.dumps({"version": jax.__version__, "source": rep.kernel_source, "counts": rep.counts(),
                  "cases": [[r.case.dtype, r.case.kind, r.verdict, r.reason] for r in rep.cases],
                  "mine": [r.verdict for r in mine.cases]}))
"""


def test_jax_dot_product_attention():
    # (in a process of its own: once JAX has started its threads, every later os.fork in this process
    # warns "JAX is multithreaded", which the suite's warning filter makes an error)
    import subprocess

    from emulation import python_command

    pytest.importorskip("jax")
    res = subprocess.run([*python_command(), "-c", JAX_RUN], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["source"] == f"jax@{got['version']}:dot_product_attention-auto"
    bad = [(kind, reason) for dtype, kind, verdict, reason in got["cases"] if verdict == "fail"]
    # a row that sees no key gets the mean of v (its masked logits are a finite large negative), and
    # NaN in v of keys a row cannot see reaches the row; everything else passes (no softcap in JAX)
    assert {kind for kind, _ in bad} == {"masked-rows", "poisoned"}
    assert all("rows see no key and must give 0" in reason for kind, reason in bad if kind == "masked-rows")
    assert {reason for _, _, verdict, reason in got["cases"] if verdict == "unsupported"} == {
        "softcap", "varlen batches", "paged KV caches"}
    assert got["counts"]["pass"] == 2 * 12 - 2 * 2 - 2
    assert got["mine"] == [verdict for dtype, _, verdict, _ in got["cases"] if dtype == "float32"]


def test_run_attn_with_any_kernel(tmp_path, capsys):
    code, out, _ = run_cli(["run", "--attn", "flashparity.kernels.attention:attention", "--convention", "bshd-numpy",
                            "--seqlen-q", "9", "--causal", "--dtype", "bfloat16", "--out", str(tmp_path / "o.npy")],
                           capsys)
    body = json.loads(out)
    assert code == 0 and body["attn_impl"] == "python:flashparity.kernels.attention.attention" and body["fallback"] is None
    assert body["kernel_source"].startswith("python:flashparity.kernels.attention.attention@sha256:")
    assert body["q_shape"] == [1, 9, 8, 64] and body["out_dtype"] == "bfloat16"
    # (apr's provenance classifier knows flash2 and naive: another kernel is UnknownAttnImpl, exit 1)
    (tmp_path / "run.json").write_text(out)
    assert run_cli(["classify", "provenance", str(tmp_path / "run.json")], capsys)[0] == 1
    # a case outside the kernel: an error, or with --fallback the naive kernel saying why
    argv = ["run", "--attn", "flashparity.kernels.attention:attention", "--convention", "bshd-numpy", "--softcap", "30"]
    code, out, err = run_cli(argv, capsys)
    assert code == 1 and "does not support this case: softcap" in err
    code, out, _ = run_cli([*argv, "--fallback"], capsys)
    body = json.loads(out)
    assert code == 0 and body["attn_impl"] == "naive" and "softcap" in body["fallback"]
    for argv, needle in [(["--attn", "flashparity.kernels.attention:attention"], "needs convention="),
                         (["--attn", "flash2", "--convention", "sdpa"], "--convention is for a package"),
                         (["--attn", "flashparity:naive", "--varlen", "3,4"], "takes dense inputs here (no --varlen"),
                         (["--attn", "flash-attn"], "--attn flash-attn runs on cuda only, not --device cpu")]:
        code, _, err = run_cli(["run", *argv], capsys)
        assert code == 2 and needle in err, (argv, err)
    # FP8 inputs through an adapter (unit descales, as flash2's own run): bfloat16 out
    code, out, _ = run_cli(["run", "--attn", "flashparity:flash2", "--dtype", "float8_e4m3fn"], capsys)
    body = json.loads(out)
    assert code == 0 and body["attn_impl"] == "flashparity:flash2" and body["out_dtype"] == "bfloat16", body


def test_run_attn_adapter_on_a_missing_gpu_is_no_gpu(capsys):
    pytest.importorskip("torch")
    if __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is visible")
    code, _, err = run_cli(["run", "--attn", "torch-sdpa", "--device", "cuda"], capsys)
    assert code == 1 and "no-gpu: no usable CUDA device for --attn torch-sdpa (torch sees none)" in err, err
    code, out, _ = run_cli(["run", "--attn", "torch-sdpa", "--device", "cuda", "--fallback"], capsys)
    body = json.loads(out)
    assert code == 0 and body["attn_impl"] == "naive" and body["fallback"] == "no-gpu" and body["device"] == "cpu"


# ---- what the review found -----------------------------------------------------------------------------------


def test_fa2_plus_infinity_lse_of_rows_that_see_no_key_reads_as_minus_infinity():
    torch = pytest.importorskip("torch")

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                        alibi_slopes=None, deterministic=False, return_attn_probs=False):
        out, lse = fp.attention(*(adapters.from_torch(x) for x in (q, k, v)), causal=causal, window=window_size,
                                softcap=softcap, softmax_scale=softmax_scale, return_lse=True)
        lse[np.isneginf(lse)] = np.inf  # (FA2's kernels: sum == 0 ? INFINITY)
        return adapters.to_torch(out), torch.from_numpy(lse), None

    case = Case(dtype="float16", seqlen_q=239, seqlen_k=17, head_dim=32, causal=True, kind="masked-rows")
    rep = conformance(flash_attn_func, convention="fa2", suite=[case])
    assert rep.cases[0].verdict == "pass" and rep.cases[0].ratios["lse"] <= 1, rep.cases[0].reason


def test_a_declared_lse_must_come_back_and_the_extreme_cases_have_teeth():
    def no_lse(q, k, v, *, causal, softmax_scale):
        return fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale)

    rep = conformance(no_lse, convention="bshd-numpy", capabilities={"lse": True}, suite=[Case()])
    assert rep.cases[0].verdict == "fail" and "declares an LSE but returned none" in rep.cases[0].reason

    def tenth(q, k, v, *, causal, softmax_scale):  # a scale 10x too small: near ±1e4 the scores still differ
        return fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale * 0.1)

    for dtype in ("float16", "bfloat16"):
        rep = conformance(tenth, convention="bshd-numpy", suite=[Case(dtype=dtype, kind="extreme")])
        assert rep.cases[0].verdict == "fail", (dtype, rep.cases[0].ratios)


def test_suites_hold_each_case_once_and_cases_normalize_their_window():
    for name in ("quick", "default", "full"):
        cases = suite_cases(name, dtypes=["float16"])
        strip = [dataclasses.replace(c, seed=0) for c in cases]
        assert len(set(strip)) == len(strip) and len({c.name for c in cases}) == len(cases), name
    assert any(c.causal and c.window != (-1, -1) for c in suite_cases("default", dtypes=["float32"]))
    assert Case(window=[-1, -1]) == Case() and hash(Case(window=[3, 0])) == hash(Case(window=(3, 0)))
    with pytest.raises(ValueError, match=r"window must be \(left, right\), integers >= -1, got \(1.5, 2\)"):
        Case(window=(1.5, 2))
    with pytest.raises(ValueError, match="capabilities\\['dtypes'\\] must be a list of"):
        conformance(lambda q, k, v: q, convention="bshd", capabilities={"dtypes": "float16"})
    with pytest.raises(ValueError, match="dtypes= and seed= choose a named suite"):
        conformance("flashparity:naive", suite=[Case()], dtypes=["float16"])


def test_kernel_parity_judges_a_kernel_on_untouched_inputs_and_never_skips_a_crash(capsys):
    def zero_q(q, k, v, *, causal, softmax_scale):
        q[...] = 0  # (on its own copy: the references see the true inputs)
        return fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale)

    body = fp.kernel_parity(zero_q, convention="bshd-numpy", seqlen_q=37, causal=True)
    assert not body["fa2_rule_ok"] and body["max_abs_diff"] > 0.01

    import sys

    def sloppy(q, k, v, *, causal, softmax_scale):
        if causal:
            raise ValueError("no causal here")
        return fp.attention(q, k, v, softmax_scale=softmax_scale).astype(np.float32)

    mod = types.ModuleType("fp_test_sloppy")
    mod.sloppy = sloppy
    sys.modules["fp_test_sloppy"] = mod
    try:
        code, out, err = run_cli(["kernel", "parity", "--impl", "fp_test_sloppy:sloppy", "--convention", "bshd-numpy",
                                  "--sweep", "--check"], capsys)
        assert code == 1 and ".sloppy raised ValueError: no causal here" in err, err
        code, out, err = run_cli(["kernel", "parity", "--impl", "fp_test_sloppy:sloppy", "--convention", "bshd-numpy",
                                  "--dtype", "bfloat16"], capsys)
        assert code == 1 and "returned float32" in err and "Traceback" not in err
        mod.not_callable = 3
        code, _, err = run_cli(["kernel", "parity", "--impl", "fp_test_sloppy:not_callable", "--convention", "bshd",
                                "--suite", "quick"], capsys)
        assert code == 2 and "kernel must be callable, got a int" in err
    finally:
        del sys.modules["fp_test_sloppy"]
    code, _, err = run_cli(["kernel", "parity", "--impl", "torch-sdpa", "--suite", "quick", "--causal",
                            "--head-dim", "512"], capsys)
    assert code == 2 and "--head-dim, --causal shape one kernel parity case" in err


def test_a_kernel_named_by_a_module_path_from_before_the_layers_is_told_where_it_went():
    from flashparity.kernels.adapters import resolve

    with pytest.raises(ValueError, match=r"flashparity.attention moved to flashparity.kernels.attention"):
        resolve("flashparity.attention:attention", convention="bshd-numpy")
