"""The `flashparity` CLI: info, classify (both forms), exit codes 0/1/2, one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from emulation import console_script, python_command

import flashparity as fp
from flashparity.cli import main

SHA = "abcdef0123456789abcdef0123456789abcdef01"

# The example bodies of the seed's tests, with the outcome the seed gives each.
SEED_BODIES = [
    ("parity", {"max_abs_diff": 0.002, "cosine_sim": 0.99999}, "Ok"),
    ("parity", {"max_abs_diff": 0.01, "cosine_sim": 0.99999}, "MaxAbsDiffExceedsTolerance"),
    ("parity", {"max_abs_diff": 0.001, "cosine_sim": 0.99}, "CosineSimBelowFloor"),
    ("parity", {"cosine_sim": 1.0}, "MissingMaxAbsDiff"),
    ("parity", {"max_abs_diff": 0.0}, "MissingCosineSim"),
    ("provenance", {"attn_impl": "flash2", "kernel_source": f"hf-kernels-community:flash-attn2@{SHA}"}, "OkFlash2"),
    ("provenance", {"attn_impl": "flash2", "kernel_source": "hf-kernels-community:flash-attn2@short"},
     "KernelSourceMalformed"),
    ("provenance", {"attn_impl": "flash2"}, "KernelSourceMissing"),
    ("provenance", {"attn_impl": "naive", "fallback": "no-gpu"}, "OkFallback"),
    ("provenance", {"attn_impl": "naive"}, "FallbackMissingWhenNotFlash2"),
    ("provenance", {"attn_impl": "unobtanium"}, "UnknownAttnImpl"),
    ("head-dim", {"error": "unsupported-head-dim: got 96, expected 64 or 128"}, "Ok"),
    ("head-dim", {"error": "out of memory"}, "ErrorDoesNotMentionHeadDim"),
    ("head-dim", {}, "MissingErrorField"),
]


def run(argv, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


@pytest.mark.parametrize("which,body,kind", SEED_BODIES, ids=[f"{w}-{k}" for w, _, k in SEED_BODIES])
def test_classify_seed_bodies(which, body, kind, tmp_path, capsys):
    code, out, err = run(["classify", which, write(tmp_path, "b.json", body)], capsys)
    result = json.loads(out)
    assert result["outcome"] == kind
    assert code == (0 if result["ok"] else 1)
    assert result["ok"] is kind.startswith("Ok")
    assert err == ""


def test_classify_outcome_fields(tmp_path, capsys):
    code, out, _ = run(["classify", "parity", write(tmp_path, "b.json", {"max_abs_diff": 0.01, "cosine_sim": 1})], capsys)
    assert code == 1
    assert json.loads(out) == {"outcome": "MaxAbsDiffExceedsTolerance", "ok": False, "got": 0.01, "tolerance": 0.005}


def test_classify_reads_stdin(capsys, monkeypatch):
    body = b'{"max_abs_diff": 0.002, "cosine_sim": 0.99999}'
    for argv in (["classify", "parity"], ["classify", "parity", "-"]):
        code, out, _ = run(argv, capsys, stdin=body, monkeypatch=monkeypatch)
        assert code == 0 and json.loads(out)["outcome"] == "Ok"


def test_classify_nan_is_written_as_nan_token(capsys, monkeypatch):
    code, out, _ = run(["classify", "parity"], capsys, stdin=b'{"max_abs_diff": NaN, "cosine_sim": 1}',
                       monkeypatch=monkeypatch)
    assert code == 1
    assert out.strip() == '{"outcome": "NonFiniteMaxAbsDiff", "ok": false, "got": NaN}'


def test_classify_tolerances(tmp_path, capsys):
    f = write(tmp_path, "b.json", {"max_abs_diff": 0.01, "cosine_sim": 0.999})
    assert run(["classify", "parity", f], capsys)[0] == 1
    code, out, _ = run(["classify", "parity", f, "--tol-abs", "0.02", "--tol-cos", "0.99"], capsys)
    assert code == 0 and json.loads(out) == {"outcome": "Ok", "ok": True, "max_abs_diff": 0.01, "cosine_sim": 0.999}
    code, out, _ = run(["classify", "parity", f, "--tol-abs", "0.02"], capsys)
    assert code == 1 and json.loads(out)["floor"] == 0.9999


def test_classify_kernel_source_prefix(tmp_path, capsys):
    f = write(tmp_path, "b.json", {"attn_impl": "flash2", "kernel_source": f"flashparity:flash2@{SHA}"})
    assert json.loads(run(["classify", "provenance", f], capsys)[1])["outcome"] == "KernelSourceMalformed"
    code, out, _ = run(["classify", "provenance", f, "--kernel-source-prefix", "flashparity:flash2@"], capsys)
    assert code == 0 and json.loads(out) == {"outcome": "OkFlash2", "ok": True, "sha": SHA}


def test_classify_lint_form(tmp_path, capsys):
    par = write(tmp_path, "par.json", {"max_abs_diff": 0.002, "cosine_sim": 0.99999})
    prov = write(tmp_path, "prov.json", {"attn_impl": "naive", "fallback": "no-gpu"})
    hd = write(tmp_path, "hd.json", {"error": "unsupported-head-dim: got 512"})
    argv = ["classify", "--parity-file", par, "--provenance-file", prov, "--head-dim-error-file", hd]
    code, out, _ = run(argv + ["--json"], capsys)
    assert code == 0
    body = json.loads(out)
    assert body["ok"] is True
    assert {k: v["outcome"] for k, v in body["checks"].items()} == {
        "parity": "Ok", "provenance": "OkFallback", "head-dim": "Ok"}
    code, out, _ = run(argv, capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3 and all(" PASS " in line for line in lines)

    bad = write(tmp_path, "bad.json", {"attn_impl": "naive"})
    code, out, _ = run(["classify", "--parity-file", par, "--provenance-file", bad, "--json"], capsys)
    assert code == 1
    body = json.loads(out)
    assert body["ok"] is False
    assert body["checks"]["provenance"] == {"outcome": "FallbackMissingWhenNotFlash2", "ok": False, "attn_impl": "naive"}
    code, out, _ = run(["classify", "--provenance-file", bad], capsys)
    assert code == 1 and "FAIL" in out and "FallbackMissingWhenNotFlash2" in out


def test_classify_lint_tolerances(tmp_path, capsys):
    par = write(tmp_path, "par.json", {"max_abs_diff": 0.01, "cosine_sim": 0.999})
    assert run(["classify", "--parity-file", par], capsys)[0] == 1
    assert run(["classify", "--parity-file", par, "--tol-abs", "0.05", "--tol-cos", "0.99"], capsys)[0] == 0


def test_not_an_object_is_a_rejection_not_a_usage_error(tmp_path, capsys):
    code, out, err = run(["classify", "parity", write(tmp_path, "b.json", "[1, 2]")], capsys)
    assert code == 1 and json.loads(out)["outcome"] == "NotAnObject" and err == ""


USAGE_ERRORS = [
    (["classify", "parity", "/nonexistent/x.json"], "cannot read '/nonexistent/x.json'"),
    (["classify", "parity", "{bad}"], "not valid JSON"),
    (["classify", "parity", "{empty}"], "not valid JSON"),
    (["classify", "parity", "{latin1}"], "is not UTF-8"),
    (["classify", "parity", "{ok}", "--tol-abs", "nan"], "--tol-abs must be a finite number >= 0, got 'nan'"),
    (["classify", "parity", "{ok}", "--tol-abs", "-0.1"], "--tol-abs must be a finite number >= 0, got '-0.1'"),
    (["classify", "parity", "{ok}", "--tol-cos", "inf"], "--tol-cos must be a finite number >= 0, got 'inf'"),
    (["classify", "parity", "{ok}", "--tol-cos", "abc"], "--tol-cos must be a number, got 'abc'"),
    (["classify", "provenance", "{ok}", "--tol-abs", "0.1"], "--tol-abs/--tol-cos apply only to the parity"),
    (["classify", "parity", "{ok}", "--kernel-source-prefix", "x"], "--kernel-source-prefix applies only"),
    (["classify", "parity", "{ok}", "--parity-file", "{ok}"], "not both"),
    (["classify", "speed", "{ok}"], "invalid choice"),
    (["classify"], "give KIND"),
    (["classify", "--parity-file", "-", "--provenance-file", "-"], "stdin ('-') can be read for only one file"),
    (["frobnicate"], "invalid choice"),
    ([], None),
]


@pytest.mark.parametrize("argv,message", USAGE_ERRORS, ids=[" ".join(a) or "no-args" for a, _ in USAGE_ERRORS])
def test_usage_errors_exit_2_with_one_line(argv, message, tmp_path, capsys):
    files = {
        "{bad}": write(tmp_path, "bad.json", "{not json"),
        "{empty}": write(tmp_path, "empty.json", ""),
        "{ok}": write(tmp_path, "ok.json", {"max_abs_diff": 0, "cosine_sim": 1}),
    }
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"error": "caf\xe9"}')
    files["{latin1}"] = str(latin1)
    argv = [files.get(a, a) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    if message is not None:
        assert err.count("\n") == 1 and err.startswith("flashparity: error: ")
        assert message in err
        assert "Traceback" not in err


def test_info(capsys):
    code, out, _ = run(["info"], capsys)
    assert code == 0
    assert out.startswith(f"flashparity {fp.__version__}\n")
    assert fp.build_info()["kernel_digest"] in out
    assert f"  simd levels   {' '.join(fp.build_info()['simd_levels'])} (" in out
    amx = fp.build_info()["amx"]  # available (then how to opt in, or that it is in use), or why not
    assert f"  amx           {amx}" in out and ("FLASHPARITY_SIMD=avx512amx" in out) == (amx == "available")
    code, out, _ = run(["info", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["version"] == fp.__version__ and info == json.loads(json.dumps(fp.build_info(occupancy=True)))


def test_console_script_and_module_entry_points(tmp_path):
    body = write(tmp_path, "b.json", {"attn_impl": "naive", "fallback": "requested"})
    exe = console_script("flashparity")
    commands = [[*python_command(), "-m", "flashparity"]]
    if exe is not None:
        commands.append([exe])
    for cmd in commands:
        res = subprocess.run(cmd + ["classify", "provenance", body], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"outcome": "OkFallback", "ok": True, "reason": "requested"}
        res = subprocess.run(cmd + ["classify", "parity", str(tmp_path / "missing.json")],
                             capture_output=True, text=True)
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
        res = subprocess.run(cmd + ["--version"], capture_output=True, text=True)
        assert res.returncode == 0 and res.stdout.strip() == f"flashparity {fp.__version__}"


def test_help_is_true():
    res = subprocess.run([*python_command(), "-m", "flashparity", "classify", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for flag in ("--parity-file", "--provenance-file", "--head-dim-error-file", "--tol-abs", "--tol-cos",
                 "--kernel-source-prefix", "--json"):
        assert flag in res.stdout


def test_files_are_written_atomically(tmp_path):
    # a temporary file in the same directory, renamed into place once complete: an error or an
    # interrupt midway leaves the previous file (or none), and no temporary behind
    from flashparity._write import write_atomically

    target = tmp_path / "report.json"
    target.write_text("old\n")

    def half_then(exc):
        def write(fh):
            fh.write(b'{"half": ')
            raise exc
        return write

    for exc in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            write_atomically(str(target), half_then(exc))
        assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    write_atomically(str(target), lambda fh: fh.write(b"new\n"))
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask():
    import os

    m = os.umask(0)
    os.umask(m)
    return m


def test_run_out_is_written_where_asked(tmp_path, capsys):
    out = tmp_path / "attn.out"  # no .npy suffix: written to exactly this path
    code = main(["run", "--attn", "flash2", "--seq-len", "8", "--num-heads", "2", "--num-kv-heads", "2",
                 "--head-dim", "16", "--out", str(out), "--json"])
    capsys.readouterr()
    assert code == 0 and out.exists() and np.load(out, allow_pickle=False).shape == (1, 1, 2, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attn.out"]
