"""kernel parity (API and CLI), run provenance, assert_parity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import flashparity as fp
from flashparity.classify import classify_head_dim_error, classify_parity_numerics, classify_provenance
from flashparity.cli import main

APR_KEYS = {"kernel", "reference", "seq_len", "num_heads", "num_kv_heads", "head_dim", "seed", "regime",
            "max_abs_diff", "cosine_sim", "attn_impl", "kernel_source", "fallback"}


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---- fp.kernel_parity ----------------------------------------------------------------------------


def test_kernel_parity_body_defaults_are_aprs():
    body = fp.kernel_parity()
    assert APR_KEYS <= set(body)
    assert (body["seq_len"], body["num_heads"], body["num_kv_heads"], body["head_dim"], body["seed"]) == (128, 8, 8, 64, 0)
    assert body["regime"] == "decode" and body["seqlen_q"] == 1
    assert body["kernel"] == body["attn_impl"] == "flash2" and body["fallback"] is None
    assert body["kernel_source"] == fp.build_info()["kernel_source"]["flash2"]
    assert classify_parity_numerics(body).ok
    assert classify_provenance(body, kernel_source_prefix="flashparity:flash2@").kind == "OkFlash2"
    assert body["fa2_rule_ok"] is True
    assert body["ref_max_abs_diff"] <= 2 * body["baseline_max_abs_diff"] + 1e-5
    json.dumps(body)


def test_kernel_parity_is_reproducible_and_seed_sensitive():
    a = fp.kernel_parity(seed=3, seqlen_q=17, causal=True, num_kv_heads=2)
    b = fp.kernel_parity(seed=3, seqlen_q=17, causal=True, num_kv_heads=2)
    c = fp.kernel_parity(seed=4, seqlen_q=17, causal=True, num_kv_heads=2)
    assert a == b
    assert a["max_abs_diff"] != c["max_abs_diff"] or a["cosine_sim"] != c["cosine_sim"]


def test_kernel_parity_inputs_are_the_seeded_generator():
    from flashparity.kernels.kernel_parity import Case, make_inputs

    q, k, v = make_inputs(Case(seed=5, seq_len=7, num_heads=2, num_kv_heads=1, head_dim=3))
    rng = np.random.default_rng(5)
    assert np.array_equal(q, rng.standard_normal((1, 1, 2, 3)).astype(np.float32))
    assert np.array_equal(k, rng.standard_normal((1, 7, 1, 3)).astype(np.float32))
    assert np.array_equal(v, rng.standard_normal((1, 7, 1, 3)).astype(np.float32))


def test_kernel_parity_naive_and_tiled_alias():
    body = fp.kernel_parity("naive")
    assert body["attn_impl"] == "naive" and body["fallback"] == "requested"
    assert classify_provenance(body).ok and body["max_abs_diff"] == 0.0
    assert fp.kernel_parity("tiled")["kernel"] == "flash2"
    with pytest.raises(ValueError, match="kernel must be a built-in adapter"):
        fp.kernel_parity("fast")


def test_kernel_parity_low_precision_fa2_rule():
    body = fp.kernel_parity(dtype="bfloat16", seqlen_q=64, causal=True)
    assert body["dtype"] == "bfloat16" and body["regime"] == "prefill"
    assert body["fa2_rule_ok"] is True
    assert body["ulp_dtype"] == "bfloat16"


def test_kernel_parity_sweep_worst_case():
    body = fp.kernel_parity(sweep=True, seq_len=64)
    cases = body["cases"]
    # 24 plain; per dtype an ALiBi prefill and decode, a varlen batch, a paged cache; per FP8 format
    # prefill and decode at head dims 64 and 128 and a paged cache
    assert len(cases) == 46
    assert sum(c["alibi"] for c in cases) == 6
    assert sum(c["varlen"] is not None and c["page_size"] is None for c in cases) == 3
    assert sum(c["page_size"] == 16 for c in cases) == 5
    assert sum(c["dtype"].startswith("float8") for c in cases) == 10
    assert body["max_abs_diff"] == max(c["max_abs_diff"] for c in cases)
    assert body["cosine_sim"] == min(c["cosine_sim"] for c in cases)
    assert body["fa2_rule_ok"] == all(c["fa2_rule_ok"] for c in cases)
    assert {c["dtype"] for c in cases} == {"float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"}
    assert {c["regime"] for c in cases} == {"decode", "prefill"}


def test_kernel_parity_alibi():
    body = fp.kernel_parity(alibi=True, seqlen_q=48, seq_len=80, causal=True, num_heads=6, num_kv_heads=2)
    plain = fp.kernel_parity(seqlen_q=48, seq_len=80, causal=True, num_heads=6, num_kv_heads=2)
    assert body["alibi"] is True and plain["alibi"] is False and body["fa2_rule_ok"]
    assert body["max_abs_diff"] < 1e-5
    # the case's inputs with and without the bias give different outputs: the flag reaches the kernels
    from flashparity.kernels.kernel_parity import Case, alibi_slopes, case_inputs

    q, k, v, _ = case_inputs(Case(seqlen_q=48, seq_len=80, num_heads=6, num_kv_heads=2))
    assert not np.array_equal(fp.attention(q, k, v, causal=True, alibi_slopes=alibi_slopes(6)),
                              fp.attention(q, k, v, causal=True))
    with pytest.raises(ValueError, match="alibi must be a bool, got 1"):
        fp.kernel_parity(alibi=1)


@pytest.mark.parametrize("kw", [dict(varlen=(37, 1, 0, 90), causal=True), dict(page_size=7, batch=3, seqlen_q=4),
                                dict(varlen=(300, 0, 5), page_size=16, alibi=True)])
def test_kernel_parity_serving_layouts(kw):
    body = fp.kernel_parity(num_kv_heads=2, **kw)
    assert body["fa2_rule_ok"] and body["max_abs_diff"] < 1e-5 and body["cosine_sim"] > 0.999999
    assert body["varlen"] == (list(kw["varlen"]) if "varlen" in kw else None)
    assert body["page_size"] == kw.get("page_size")
    total = sum(kw["varlen"]) if "page_size" not in kw else len(kw.get("varlen", ())) or kw["batch"]
    assert body["numel"] == total * (kw.get("seqlen_q", 1) if "page_size" in kw else 1) * 8 * 64
    with pytest.raises(ValueError, match="varlen must be a non-empty list of lengths >= 0"):
        fp.kernel_parity(varlen=())
    with pytest.raises(ValueError, match="page_size must be an integer >= 1, got 0"):
        fp.kernel_parity(page_size=0)


def test_cli_serving_flags(tmp_path, capsys):
    code, out, _ = run_cli(["kernel", "parity", "--varlen", "5,0,9", "--page-size", "4", "--json"], capsys)
    body = json.loads(out)
    assert code == 0 and body["varlen"] == [5, 0, 9] and body["page_size"] == 4 and body["fa2_rule_ok"]
    out_path = tmp_path / "o.npy"
    code, out, _ = run_cli(["run", "--varlen", "3,5", "--causal", "--out", str(out_path)], capsys)
    assert code == 0 and json.loads(out)["q_shape"] == [8, 8, 64]
    from flashparity.kernels.kernel_parity import Case, case_inputs

    q, k, v, meta = case_inputs(Case(varlen=(3, 5)))
    cu = meta["cu_seqlens"]
    assert np.array_equal(np.load(out_path), fp.attention_varlen(q, k, v, cu, cu, causal=True))
    code, _, err = run_cli(["kernel", "parity", "--varlen", "3,-1"], capsys)
    assert code == 2 and "--varlen lengths must be >= 0, got '3,-1'" in err
    code, _, err = run_cli(["run", "--varlen", "3", "--q", "a.npy", "--k", "b.npy", "--v", "c.npy"], capsys)
    assert code == 2 and "--varlen and --page-size make seeded inputs" in err


def test_alibi_slopes_are_the_papers():
    from flashparity.kernels.kernel_parity import alibi_slopes

    assert np.array_equal(alibi_slopes(8), np.float32([2.0 ** -(i + 1) for i in range(8)]))
    # 12 heads: the 8-head sequence, then the odd members of the 16-head one
    s16 = [2.0 ** (-0.5 * (i + 1)) for i in range(16)]
    assert np.array_equal(alibi_slopes(12), np.float32([2.0 ** -(i + 1) for i in range(8)] + s16[0::2][:4]))
    assert alibi_slopes(1).tolist() == [2.0 ** -8]


def test_kernel_parity_unsupported_head_dim():
    with pytest.raises(fp.UnsupportedHeadDimError, match="^unsupported-head-dim: got 512"):
        fp.kernel_parity(head_dim=512)


def test_kernel_parity_bad_case():
    with pytest.raises(ValueError, match="num_heads must be an integer >= 1, got 0"):
        fp.kernel_parity(num_heads=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        fp.kernel_parity(dtype="int8")


# ---- CLI: kernel parity --------------------------------------------------------------------------


def test_cli_kernel_parity_json_and_output_file(tmp_path, capsys):
    out_file = tmp_path / "body.json"
    code, out, _ = run_cli(["kernel", "parity", "--impl", "tiled", "--ref", "naive", "--seq-len", "64",
                            "--num-heads", "4", "--num-kv-heads", "2", "--head-dim", "32", "--json",
                            "-o", str(out_file)], capsys)
    assert code == 0
    body = json.loads(out)
    assert body == json.loads(out_file.read_text())
    assert (body["seq_len"], body["num_heads"], body["num_kv_heads"], body["head_dim"]) == (64, 4, 2, 32)
    assert body["kernel"] == "flash2"


def test_cli_kernel_parity_check_gate(capsys):
    code, out, _ = run_cli(["kernel", "parity", "--check", "--json"], capsys)
    assert code == 0 and json.loads(out)["check"]["outcome"] == "Ok"
    # bfloat16 prefill: correct, but past the fixed 5e-3 gate (the FA2 rule is the dtype-aware one)
    code, out, _ = run_cli(["kernel", "parity", "--dtype", "bfloat16", "--seqlen-q", "128", "--causal",
                            "--check", "--json"], capsys)
    body = json.loads(out)
    assert body["fa2_rule_ok"] is True
    assert code == (0 if body["check"]["ok"] else 1)
    code, out, _ = run_cli(["kernel", "parity", "--dtype", "bfloat16", "--seqlen-q", "128", "--causal",
                            "--check", "--tol-abs", "0.5", "--tol-cos", "0.99", "--json"], capsys)
    assert code == 0 and json.loads(out)["check"]["ok"] is True


def test_cli_kernel_parity_head_dim_error(capsys):
    code, out, err = run_cli(["kernel", "parity", "--head-dim", "300", "--json"], capsys)
    assert code == 1 and err == ""
    body = json.loads(out)
    assert classify_head_dim_error(body).ok and body["error"].startswith("unsupported-head-dim: got 300")
    code, out, err = run_cli(["kernel", "parity", "--head-dim", "300"], capsys)
    assert code == 1 and out == "" and err.startswith("flashparity: unsupported-head-dim: got 300")


def test_cli_kernel_parity_device_without_gpu(capsys):
    if fp.build_info()["cuda_available"]:
        pytest.skip("a GPU is present")
    code, out, err = run_cli(["kernel", "parity", "--device", "cuda", "--json"], capsys)
    assert code == 1 and json.loads(out)["error"].startswith("no-gpu")


def test_cli_kernel_parity_human_and_sweep(capsys):
    code, out, _ = run_cli(["kernel", "parity", "--sweep", "--seq-len", "32"], capsys)
    assert code == 0 and "46 cases" in out and "FAILED" not in out and "prefill+alibi" in out
    assert "prefill+varlen" in out and "decode+paged" in out


@pytest.mark.parametrize("argv,msg", [
    (["kernel", "parity", "--num-heads", "0"], "--num-heads must be >= 1"),
    (["kernel", "parity", "--seed", "-1"], "--seed must be >= 0"),
    (["kernel", "parity", "--dtype", "int8"], "invalid choice"),
    (["kernel", "parity", "--tol-abs", "nan", "--check"], "--tol-abs must be a finite number >= 0"),
    (["kernel"], None),
])
def test_cli_kernel_parity_usage_errors(argv, msg, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    if msg:
        assert msg in err and err.count("\n") == 1


# ---- CLI: run ------------------------------------------------------------------------------------


def test_cli_run_provenance(capsys):
    code, out, _ = run_cli(["run", "--attn", "flash2", "--json"], capsys)
    body = json.loads(out)
    assert code == 0 and body["attn_impl"] == "flash2" and body["fallback"] is None
    assert classify_provenance(body, kernel_source_prefix="flashparity:flash2@").ok
    code, out, _ = run_cli(["run", "--attn", "naive"], capsys)
    body = json.loads(out)
    assert body["attn_impl"] == "naive" and body["fallback"] == "requested" and classify_provenance(body).ok
    assert body["alibi"] is False


def test_cli_run_alibi(tmp_path, capsys):
    out_path = tmp_path / "o.npy"
    code, out, _ = run_cli(["run", "--alibi", "--seqlen-q", "9", "--seq-len", "20", "--num-heads", "3",
                            "--num-kv-heads", "1", "--out", str(out_path)], capsys)
    assert code == 0 and json.loads(out)["alibi"] is True
    from flashparity.kernels.kernel_parity import Case, alibi_slopes, make_inputs

    q, k, v = make_inputs(Case(seqlen_q=9, seq_len=20, num_heads=3, num_kv_heads=1))
    assert np.array_equal(np.load(out_path), fp.attention(q, k, v, alibi_slopes=alibi_slopes(3)))


def test_cli_run_files_and_out(tmp_path, capsys):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 5, 2, 8)).astype(np.float32)
    k = rng.standard_normal((1, 9, 1, 8)).astype(np.float32)
    v = rng.standard_normal((1, 9, 1, 8)).astype(np.float32)
    for name, arr in (("q", q), ("k", k), ("v", v)):
        np.save(tmp_path / f"{name}.npy", arr)
    out = tmp_path / "out.npy"
    code, text, _ = run_cli(["run", "--q", str(tmp_path / "q.npy"), "--k", str(tmp_path / "k.npy"), "--v",
                             str(tmp_path / "v.npy"), "--causal", "--out", str(out)], capsys)
    assert code == 0
    body = json.loads(text)
    assert body["q_shape"] == [1, 5, 2, 8] and body["k_shape"] == [1, 9, 1, 8] and body["out"] == str(out)
    assert np.array_equal(np.load(out), fp.attention(q, k, v, causal=True))


def test_cli_run_no_silent_fallback(capsys):
    code, out, err = run_cli(["run", "--head-dim", "320", "--json"], capsys)
    assert code == 1 and classify_head_dim_error(json.loads(out)).ok
    code, out, _ = run_cli(["run", "--head-dim", "320", "--fallback"], capsys)
    body = json.loads(out)
    assert code == 0 and body["attn_impl"] == "naive" and body["fallback"].startswith("unsupported-head-dim: got 320")
    assert classify_provenance(body).kind == "OkFallback"


def test_cli_run_cuda_without_gpu(capsys):
    if fp.build_info()["cuda_available"]:
        pytest.skip("a GPU is present")
    code, out, _ = run_cli(["run", "--device", "cuda", "--json"], capsys)
    assert code == 1 and json.loads(out)["error"].startswith("no-gpu")
    code, out, _ = run_cli(["run", "--device", "cuda", "--fallback"], capsys)
    body = json.loads(out)
    assert code == 0 and body["fallback"] == "no-gpu" and body["device"] == "cpu" and classify_provenance(body).ok


def test_cli_run_bad_inputs(tmp_path, capsys):
    code, _, err = run_cli(["run", "--q", str(tmp_path / "missing.npy"), "--k", "x", "--v", "y"], capsys)
    assert code == 2 and "cannot read --q" in err
    code, _, err = run_cli(["run", "--q", "a.npy"], capsys)
    assert code == 2 and "give all of --q, --k and --v" in err
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a numpy file at all")
    code, out, _ = run_cli(["run", "--q", str(bad), "--k", str(bad), "--v", str(bad), "--json"], capsys)
    assert code == 1 and json.loads(out)["error"].startswith("bad-file:")


# ---- assert_parity -------------------------------------------------------------------------------


def test_assert_parity_passes_and_returns_stats():
    x = np.linspace(0, 1, 100, dtype=np.float32)
    s = fp.assert_parity(x, x + 1e-7, atol=1e-6, rtol=0)
    assert isinstance(s, fp.ParityStats) and s.mismatches == 0


def test_assert_parity_message():
    a = np.zeros((3, 4), np.float32)
    b = np.zeros((3, 4), np.float32)
    a[1, 2] = 0.5
    a[2, 3] = np.nan
    with pytest.raises(AssertionError) as info:
        fp.assert_parity(a, b, atol=1e-3, rtol=1e-3)
    msg = str(info.value)
    assert "Mismatched elements: 2 / 12 (16.67%)" in msg
    assert "Greatest absolute difference: nan at index (2, 3)" in msg
    assert "Non-finite elements (NaN or inf in either input): 1" in msg


def test_assert_parity_bounds():
    x = np.ones(10)
    y = x + 1e-3
    fp.assert_parity(y, x, atol=1e-2, rtol=0)
    with pytest.raises(AssertionError, match="at most 0.0001 overall"):
        fp.assert_parity(y, x, atol=1e-2, rtol=0, max_abs_diff=1e-4)
    with pytest.raises(AssertionError, match="at least 1.5 required"):
        fp.assert_parity(y, x, atol=1e-2, rtol=0, min_cosine=1.5)
    with pytest.raises(ValueError, match="min_cosine must be a finite number"):
        fp.assert_parity(y, x, atol=0, rtol=0, min_cosine=math.nan)
    with pytest.raises(TypeError):
        fp.assert_parity(y, x)  # atol and rtol are required


@pytest.mark.gpu
def test_cli_run_and_kernel_parity_on_the_gpu(tmp_path, capsys):
    code, out, _ = run_cli(["run", "--device", "cuda", "--dtype", "bfloat16", "--seq-len", "300", "--causal",
                            "--out", str(tmp_path / "o.npy")], capsys)
    body = json.loads(out)
    assert code == 0 and body["device"] == "cuda" and body["attn_impl"] == "flash2" and body["fallback"] is None
    assert classify_provenance(body, kernel_source_prefix="flashparity:flash2@").ok
    assert np.load(tmp_path / "o.npy", allow_pickle=False).shape == (1, 1, 8, 64)  # decode by default
    code, out, _ = run_cli(["kernel", "parity", "--device", "cuda", "--sweep", "--json"], capsys)
    body = json.loads(out)
    assert code == 0 and body["device"] == "cuda" and body["fa2_rule_ok"], body
