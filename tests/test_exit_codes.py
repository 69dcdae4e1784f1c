"""One exit-code rule for every command that judges: 0 within tolerance, 1 outside it (or input
rejected), 2 usage error; --report-only reports without judging. And no traceback for a package
that is not installed."""

from __future__ import annotations

import json
import math
import subprocess
import textwrap

import numpy as np
import pytest
from emulation import emulated, python_command

import flashparity as fp
from flashparity.cli import EXIT_RULE, build_parser, main
from flashparity.kernels import kernel_parity as kp


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def save_st(path, tensors: dict):
    from test_compare import write_safetensors

    write_safetensors(path, tensors)


@pytest.fixture
def close_pair(tmp_path):
    """b, and a = b with 2 of its 1000 elements off by 1e-3 (0.2% mismatched at atol 1e-4)."""
    rng = np.random.default_rng(7)
    b = rng.standard_normal((40, 25)).astype(np.float32)
    a = b.copy()
    a[3, 4] += 1e-3
    a[17, 0] -= 1e-3
    return a, b


def sides(tmp_path, a, b, kind):
    """Two sides holding a (under test) and b (reference) as one kind of file or directory."""
    pa, pb = tmp_path / "A", tmp_path / "B"
    pa.mkdir()
    pb.mkdir()
    if kind == "npy":
        np.save(pa / "t.npy", a)
        np.save(pb / "t.npy", b)
        return str(pa / "t.npy"), str(pb / "t.npy")
    if kind == "npz":
        np.savez(pa / "t.npz", w=a, u=np.ones(3, np.float32))
        np.savez(pb / "t.npz", w=b, u=np.ones(3, np.float32))
        return str(pa / "t.npz"), str(pb / "t.npz")
    if kind == "safetensors":
        save_st(pa / "m.safetensors", {"w": a, "u": np.ones(3, np.float32)})
        save_st(pb / "m.safetensors", {"w": b, "u": np.ones(3, np.float32)})
        return str(pa / "m.safetensors"), str(pb / "m.safetensors")
    # a sharded checkpoint against one sharded differently
    for d, x, groups in ((pa, a, [["w"], ["u"]]), (pb, b, [["w", "u"]])):
        tensors = {"w": x, "u": np.ones(3, np.float32)}
        wmap = {}
        for i, names in enumerate(groups):
            shard = f"model-{i:05d}.safetensors"
            save_st(d / shard, {n: tensors[n] for n in names})
            wmap.update({n: shard for n in names})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    return str(pa), str(pb)


KINDS = ["npy", "npz", "safetensors", "sharded"]


@pytest.mark.parametrize("kind", KINDS)
def test_compare_exits_1_on_any_mismatch_beyond_the_ratio(kind, close_pair, tmp_path, capsys):
    a, b = close_pair
    pa, pb = sides(tmp_path, a, b, kind)
    # outside atol 1e-4: two mismatches, and the default ratio is 0
    code, out, err = run_cli(["compare", pa, pb, "--atol", "1e-4", "--json", "--quiet"], capsys)
    body = json.loads(out)
    assert code == 1 and body["ok"] is False and body["mismatches"] == 2 and err == ""
    assert [r["ok"] for r in body["tensors"] if r["numel"] == a.size] == [False]
    assert all(r["ok"] for r in body["tensors"] if r["numel"] != a.size)
    # within a tolerance that covers 1e-3
    code, out, _ = run_cli(["compare", pa, pb, "--atol", "2e-3", "--json", "--quiet"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True
    # a ratio that allows 2 of 1000 elements, and one that does not
    code, _, _ = run_cli(["compare", pa, pb, "--atol", "1e-4", "--max-mismatch-ratio", "0.002", "--quiet"], capsys)
    assert code == 0
    code, _, _ = run_cli(["compare", pa, pb, "--atol", "1e-4", "--max-mismatch-ratio", "0.0019", "--quiet"], capsys)
    assert code == 1
    # the same files: exit 0 at zero tolerance
    code, _, _ = run_cli(["compare", pa, pa, "--quiet"], capsys)
    assert code == 0


def test_compare_min_cosine_on_files(tmp_path, capsys):
    rng = np.random.default_rng(3)
    b = rng.standard_normal(4096).astype(np.float32)
    a = (b + 0.3 * rng.standard_normal(4096)).astype(np.float32)  # cosine about 0.958
    pa, pb = sides(tmp_path, a, b, "npy")
    cos = fp.parity(a, b).cosine_sim
    common = ["compare", pa, pb, "--atol", "10", "--quiet", "--json"]
    code, out, _ = run_cli(common, capsys)
    assert code == 0 and json.loads(out)["min_cosine"] is None
    code, out, _ = run_cli(common + ["--min-cosine", f"{cos + 1e-3:.6f}"], capsys)
    assert code == 1 and json.loads(out)["tensors"][0]["ok"] is False
    code, _, _ = run_cli(common + ["--min-cosine", f"{cos - 1e-3:.6f}"], capsys)
    assert code == 0


def test_compare_human_output_says_why(close_pair, tmp_path, capsys):
    a, b = close_pair
    pa, pb = sides(tmp_path, a, b, "safetensors")
    code, out, _ = run_cli(["compare", pa, pb, "--atol", "1e-4", "--quiet"], capsys)
    assert code == 1
    assert "FAIL: 1 of 2 tensors outside isclose(atol=0.0001, rtol=0), no mismatch" in out
    verdicts = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:3]}
    assert verdicts == {"w": "NO", "u": "ok"}
    code, out, _ = run_cli(["compare", pa, pb, "--atol", "1e-2", "--quiet"], capsys)
    assert code == 0 and "OK: 2 tensors within isclose(atol=0.01, rtol=0), no mismatch" in out


def test_report_only_exits_0_and_says_so(close_pair, tmp_path, capsys):
    a, b = close_pair
    pa, pb = sides(tmp_path, a, b, "sharded")
    code, out, err = run_cli(["compare", pa, pb, "--report-only", "--json", "--quiet"], capsys)
    assert code == 0 and json.loads(out)["ok"] is False and "--report-only" in err
    code, out, err = run_cli(["compare", pa, pb, "--report-only", "--atol", "1", "--quiet"], capsys)
    assert code == 0 and err == ""  # (nothing to say when it passed)
    # a tensor on one side only: still a report, exit 0
    np.savez(tmp_path / "x.npz", w=a, extra=a)
    np.savez(tmp_path / "y.npz", w=a)
    xa, xb = str(tmp_path / "x.npz"), str(tmp_path / "y.npz")
    code, out, _ = run_cli(["compare", xa, xb, "--report-only", "--json", "--quiet"], capsys)
    assert code == 0 and json.loads(out)["only_in_a"] == ["extra"]
    code, out, _ = run_cli(["compare", xa, xb, "--json", "--quiet"], capsys)
    assert code == 1 and json.loads(out)["ok"] is False  # one side only fails without --report-only
    # a rejected input is not a report: exit 1 all the same
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    code, out, _ = run_cli(["compare", str(tmp_path / "bad.npy"), xb, "--report-only", "--json"], capsys)
    assert code == 1 and json.loads(out)["error"].startswith("bad-file")
    code, out, err = run_cli(["compare", pa, pb, "--report-only", "--check"], capsys)
    assert code == 2 and out == "" and "--report-only" in err and err.count("\n") == 1
    # (refused as it is parsed: before a bad file, or a head_dim no kernel has, could answer 1)
    code, out, err = run_cli(["compare", str(tmp_path / "bad.npy"), xb, "--check", "--report-only"], capsys)
    assert code == 2 and out == ""
    code, out, err = run_cli(["kernel", "parity", "--head-dim", "300", "--check", "--report-only"], capsys)
    assert code == 2 and out == ""


@pytest.mark.parametrize("argv,msg", [
    (["--min-cosine", "nan"], "--min-cosine must be a number from -1 to 1, got 'nan'"),
    (["--min-cosine", "2"], "--min-cosine must be a number from -1 to 1, got '2'"),
    (["--max-mismatch-ratio", "1.5"], "--max-mismatch-ratio must be a number from 0 to 1"),
    (["--html", "r.html"], "--html is for two dump directories"),
])
def test_compare_usage_errors(argv, msg, close_pair, tmp_path, capsys):
    pa, pb = sides(tmp_path, *close_pair, "npy")
    code, out, err = run_cli(["compare", pa, pb, *argv], capsys)
    assert code == 2 and out == "" and msg in err and err.count("\n") == 1


def test_compare_files_api_validates_and_judges(close_pair, tmp_path):
    from flashparity.compare import compare_files

    pa, pb = sides(tmp_path, *close_pair, "npz")
    body = compare_files(pa, pb, atol=1e-4, max_mismatch_ratio=0.5)
    assert body["ok"] is True and body["max_mismatch_ratio"] == 0.5
    for bad in (-0.1, 1.01, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="max_mismatch_ratio must be a number from 0 to 1"):
            compare_files(pa, pb, max_mismatch_ratio=bad)
    for bad in (float("nan"), 1.5, -2):
        with pytest.raises(ValueError, match="min_cosine must be a number from -1 to 1"):
            compare_files(pa, pb, min_cosine=bad)


def test_a_shape_or_dtype_mismatch_fails(tmp_path, capsys):
    pa, pb = sides(tmp_path, np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), "npy")
    code, out, _ = run_cli(["compare", pa, pb, "--json", "--quiet"], capsys)
    assert code == 1 and json.loads(out)["tensors"][0]["ok"] is False
    np.save(pa, np.arange(4, dtype=np.int32))
    np.save(pb, np.arange(4, dtype=np.int64))
    code, out, _ = run_cli(["compare", pa, pb, "--json", "--quiet"], capsys)
    assert code == 1 and json.loads(out)["ok"] is False
    assert json.loads(out)["tensors"][0]["error"].startswith("unsupported-dtype: int32 vs int64")


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.uint16, np.bool_, np.complex64])
def test_tensors_that_are_not_floats_compare_exactly(dtype, tmp_path, capsys, monkeypatch):
    from flashparity.compare import tasks

    monkeypatch.setattr(tasks, "CHUNK_BYTES", 1000)  # (several chunks, not a multiple of any element size)
    rng = np.random.default_rng(5)
    if dtype is np.complex64:
        x = (rng.standard_normal(1001) + 1j * rng.standard_normal(1001)).astype(dtype)
    elif dtype is np.bool_:
        x = rng.integers(0, 2, 1001).astype(bool)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, 1001, dtype=dtype, endpoint=True)
    y = x.copy()
    y[[3, 700]] = ~y[[3, 700]] if dtype is np.bool_ else x[[3, 700]] + np.ones(2, dtype)
    assert (x != y).sum() == 2
    for kind in ("npy", "npz", "safetensors") if dtype in (np.int64, np.int8, np.uint16) else ("npy", "npz"):
        d = tmp_path / kind
        d.mkdir()
        pa, pb = sides(d, x, y, kind)
        code, out, _ = run_cli(["compare", pa, pa, "--json", "--quiet"], capsys)
        body = json.loads(out)
        row = next(r for r in body["tensors"] if r["numel"] == 1001)
        assert code == 0 and row == {**row, "exact": True, "mismatches": 0, "ok": True, "max_abs_diff": 0.0}
        assert body["max_abs_diff"] == 0.0
        code, out, _ = run_cli(["compare", pa, pb, "--json", "--quiet"], capsys)
        body = json.loads(out)
        row = next(r for r in body["tensors"] if r["numel"] == 1001)
        assert code == 1 and row["mismatches"] == 2 and not row["ok"]
        want = max(abs(complex(p) - complex(q)) for p, q in zip(x[[3, 700]], y[[3, 700]]))
        if dtype is not np.complex64:  # (exact, as Python integers, the wrap of +1 included)
            want = max(abs(int(p) - int(q)) for p, q in zip(x[[3, 700]], y[[3, 700]]))
        assert row["max_abs_diff"] == body["max_abs_diff"] == float(want) > 0  # (no gate reads it as a match)
        code, out, _ = run_cli(["compare", pa, pb, "--max-mismatch-ratio", "0.002", "--quiet"], capsys)
        assert code == 0 and "(exact)" in out


def test_integer_outputs_of_two_dumps_compare_exactly(tmp_path, capsys):
    from test_hardening import make_dump

    ids = np.arange(10, dtype=np.int64)
    make_dump(tmp_path / "a", {"argmax#0": ids, "h#0": np.ones(3, np.float32)})
    other = ids.copy()
    other[7] = 0
    make_dump(tmp_path / "b", {"argmax#0": other, "h#0": np.ones(3, np.float32)})
    code, out, _ = run_cli(["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--json", "--quiet"], capsys)
    assert code == 0 and json.loads(out)["ok"]
    code, out, _ = run_cli(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", "--quiet"], capsys)
    body = json.loads(out)
    assert code == 1 and body["first_divergence"] == "argmax#0"
    assert body["entries"][0]["error"] == "1 of 10 elements differ"


# ---- kernel parity: a kernel outside FlashAttention-2's rule exits 1 ---------------------------------


@pytest.fixture
def broken_flash2(monkeypatch):
    """flash2 with one output element off by 0.05: far outside the FA2 rule in float32."""
    real = kp.run_attention

    def broken(impl, q, *args, **kw):
        out = real(impl, q, *args, **kw)
        if impl == "flash2":
            out = np.array(out, copy=True)
            out.reshape(-1)[3] += 0.05
        return out

    monkeypatch.setattr(kp, "run_attention", broken)


def test_kernel_parity_exits_1_outside_the_fa2_rule(broken_flash2, capsys):
    code, out, _ = run_cli(["kernel", "parity", "--seq-len", "16", "--json"], capsys)
    assert code == 1 and json.loads(out)["fa2_rule_ok"] is False
    code, out, _ = run_cli(["kernel", "parity", "--seq-len", "16"], capsys)
    assert code == 1 and "FA2 rule" in out and "FAILED" in out
    code, out, err = run_cli(["kernel", "parity", "--seq-len", "16", "--report-only", "--json"], capsys)
    assert code == 0 and json.loads(out)["fa2_rule_ok"] is False and "--report-only" in err
    # the naive reference against itself meets the rule: exit 0 although flash2 is broken
    code, _, _ = run_cli(["kernel", "parity", "--impl", "naive", "--seq-len", "16"], capsys)
    assert code == 0


def test_kernel_parity_sweep_counts_the_failed_cases(broken_flash2, monkeypatch, capsys):
    cases = [kp.Case(seq_len=16, dtype=d) for d in ("float32", "float16")]
    monkeypatch.setattr(kp, "default_sweep", lambda base: cases)
    code, out, _ = run_cli(["kernel", "parity", "--sweep"], capsys)
    assert code == 1 and "FA2 rule: FAILED in 2 of 2 cases" in out


def test_kernel_parity_passes_and_says_so(capsys):
    code, out, _ = run_cli(["kernel", "parity", "--seq-len", "16", "--report-only"], capsys)
    assert code == 0 and "FA2 rule" in out and ": ok" in out
    code, _, err = run_cli(["kernel", "parity", "--check", "--report-only"], capsys)
    assert code == 2 and "--report-only" in err


def _subcommands(parser) -> dict:
    return next(a for a in parser._actions if a.dest in ("command", "kernel_command")).choices


def test_the_rule_is_in_every_help():
    def squeeze(text):  # (argparse wraps lines, and may break after a hyphen)
        return "".join(text.split())

    parser = build_parser()
    assert squeeze(EXIT_RULE) in squeeze(parser.format_help())
    sub = _subcommands(parser)
    for p in (sub["compare"], _subcommands(sub["kernel"])["parity"], sub["classify"]):
        text = squeeze(p.format_help()).lower()
        assert "exit0when" in text and "1when" in text and "2on" in text
        assert p is sub["classify"] or "--report-only:exit0" in text


# ---- no traceback for a package that is not installed -----------------------------------------------

# Runs the CLI with the named packages hidden from import, as on a machine that lacks them.
HIDDEN = textwrap.dedent("""
    import sys
    hidden = set(sys.argv[1].split(",")) - {""}

    class Hide:
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in hidden:
                return None
            find = getattr(self.inner, "find_spec", None)
            return find(name, path, target) if find is not None else None

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

    if __name__ == "__main__":  # (not in --workers' spawned processes, which import this file)
        sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
        if sys.argv[2] == "--exec":
            exec(sys.argv[3])
        else:
            from flashparity.cli import main
            sys.exit(main(sys.argv[2:]))
""")

OPTIONAL = "torch,distributed,dask,cuda,safetensors,hypothesis"


# (the Python layer's imports are the same on every architecture: these run where a subprocess is
# cheap, not under .ci/aarch64's emulator, where each one starts an emulated interpreter)
NATIVE_ONLY = pytest.mark.skipif(emulated(), reason="import paths are architecture-independent; run natively")


def run_without(hidden: str, argv: list[str], tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "hidden.py"
    script.write_text(HIDDEN)
    return subprocess.run([*python_command(), str(script), hidden, *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)


@NATIVE_ONLY
def test_the_main_job_needs_no_optional_package(tmp_path):
    res = run_without(OPTIONAL, ["kernel", "parity", "--sweep", "--seq-len", "24"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "46 cases" in res.stdout and "FA2 rule: ok in all 46 cases" in res.stdout


@NATIVE_ONLY
@pytest.mark.parametrize("argv,code,needle", [
    (["info"], 0, ""),
    (["info", "--json"], 0, ""),
    (["kernel", "parity", "--dtype", "bfloat16", "--seq-len", "8"], 0, ""),
    (["run", "--attn", "flash2", "--seq-len", "8", "--device", "cuda"], 1, "no-gpu"),
    (["compare", "{a}", "{b}", "--dask", "tcp://127.0.0.1:1"], 2, "pip install 'flashparity[dask]'"),
    pytest.param(["compare", "{a}", "{b}", "--workers", "2", "--quiet"], 0, "",
                 marks=pytest.mark.skipif(emulated(), reason="worker processes exec the host's Python binary")),
    (["compare", "{a}", "{b}", "--quiet"], 0, ""),
])
def test_optional_packages_missing(argv, code, needle, tmp_path):
    np.save(tmp_path / "a.npy", np.ones(5, np.float32))
    np.save(tmp_path / "b.npy", np.ones(5, np.float32))
    argv = [{"{a}": "a.npy", "{b}": "b.npy"}.get(x, x) for x in argv]
    if "cuda" in argv and fp.build_info()["cuda_available"]:
        pytest.skip("a GPU is present")
    res = run_without(OPTIONAL, argv, tmp_path)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    assert needle in res.stdout + res.stderr


@NATIVE_ONLY
@pytest.mark.parametrize("argv", [
    ["kernel", "parity", "--dtype", "bfloat16", "--seq-len", "8"],
    ["run", "--attn", "naive", "--seq-len", "8", "--dtype", "float8_e4m3fn"],
    ["compare", "a.safetensors", "b.safetensors", "--quiet"],
])
def test_a_dependency_uninstalled_by_hand_is_one_line(argv, tmp_path):
    # ml_dtypes is a dependency; without it (pip install --no-deps, or removed) a bfloat16 path says
    # what to install instead of a traceback
    import ml_dtypes

    save_st(tmp_path / "a.safetensors", {"x": np.ones(4, ml_dtypes.bfloat16)})
    save_st(tmp_path / "b.safetensors", {"x": np.ones(4, ml_dtypes.bfloat16)})
    res = run_without(OPTIONAL + ",ml_dtypes", argv, tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == ("flashparity: error: this needs the 'ml_dtypes' package, which is not installed: "
                          "pip install ml_dtypes\n")


@NATIVE_ONLY
@pytest.mark.parametrize("call,feature", [
    ("fp.compare_modules(object(), object())", "fp.compare_modules"),
    ("fp.dump(object(), 'd')", "fp.dump"),
    ("fp.distributed.parity(np.ones(2), np.ones(2))", "fp.distributed.parity"),
])
def test_the_torch_features_name_the_install_without_torch(call, feature, tmp_path):
    code = (f"import numpy as np, flashparity as fp\n"
            f"try:\n    {call}\n"
            f"except ModuleNotFoundError as exc:\n    print(exc.name, exc, sep='|')\n")
    res = run_without(OPTIONAL, ["--exec", code], tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout == f"torch|{feature} needs torch, which is not installed: pip install torch\n"


def test_min_cosine_is_validated_alike_everywhere(tmp_path):
    from flashparity.models.modules import compare_dumps

    for bad in (float("nan"), 2.0):
        with pytest.raises(ValueError, match="min_cosine must be a number from -1 to 1"):
            compare_dumps(str(tmp_path), str(tmp_path), min_cosine=bad)
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    with pytest.raises(ValueError, match="min_cosine must be a number from -1 to 1, got nan"):
        fp.compare_modules(object(), object(), min_cosine=float("nan"))


def test_exact_rows_are_exact_and_fail_closed(tmp_path, capsys):
    def compare(x, y):
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "y.npy", y)
        code, out, _ = run_cli(["compare", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--json"], capsys)
        body = json.loads(out)
        return code, body["tensors"][0], body

    # integers past 2^53: the gap is exact before it becomes a float, never 0
    code, row, body = compare(np.array([2**62 + 1], np.int64), np.array([2**62], np.int64))
    assert code == 1 and row["mismatches"] == 1 and row["max_abs_diff"] == 1.0  # (float64 would say 0)
    code, row, body = compare(np.array([2**62 + 1, -2**63], np.int64), np.array([2**62, 2**63 - 1], np.int64))
    assert code == 1 and row["mismatches"] == 2 and row["max_abs_diff"] == float(2**64 - 1)
    # the other byte order compares by value
    code, row, _ = compare(np.arange(5, dtype=">i4"), np.arange(5, dtype="<i4"))
    assert code == 0 and row["exact"] and row["mismatches"] == 0
    # bool bytes other than 0 and 1: the file's bytes differ
    code, row, _ = compare(np.array([1, 1], np.uint8).view(bool), np.array([1, 2], np.uint8).view(bool))
    assert code == 1 and row["mismatches"] == 1 and row["max_abs_diff"] == 1.0
    # complex: by value (+0 equals -0), a NaN never equal and its gap NaN, so no gate passes it
    code, row, body = compare(np.array([0j, complex(np.nan, 0)], np.complex64),
                              np.array([complex(-0.0, 0), complex(np.nan, 0)], np.complex64))
    assert code == 1 and row["mismatches"] == 1 and math.isnan(body["max_abs_diff"])
