"""What an adversarial pass found (issue 34): unsafe writes, streams and devices given as files, a
comparison of nothing reported as a match, torch's lazy negative bit, tracebacks where one line is
promised, terminal escapes in untrusted names, and safetensors headers the library itself refuses."""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from emulation import emulated, python_command

import flashparity as fp
from flashparity import classify
from flashparity._write import printable, write_atomically
from flashparity.cli import main


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, out, err, want_code, needle):
    assert code == want_code, (code, out, err)
    assert "Traceback" not in out + err and needle in out + err, (out, err)


def raw_safetensors(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


# ---- 1. -o / --out / to_html: never replace what is not a regular file, keep a file's mode --------------


def test_an_existing_file_keeps_its_mode(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    write_atomically(str(target), lambda fh: fh.write(b"new\n"))
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "report.json"
    target.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomically(str(link), lambda fh: fh.write(b"new\n"))
    assert link.is_symlink() and target.read_text() == "new\n"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "made.json")
    write_atomically(str(dangling), lambda fh: fh.write(b"made\n"))
    assert dangling.is_symlink() and (tmp_path / "real" / "made.json").read_text() == "made\n"


def fifo_with_reader(path):
    """A FIFO at `path` and a thread reading it to the end into the returned list (a daemon: a
    regression that never opens the FIFO cannot hang the session)."""
    os.mkfifo(path)
    got: list[bytes] = []

    def read():
        with open(path, "rb") as fh:
            got.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader, got


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    reader, got = fifo_with_reader(fifo)
    write_atomically(str(fifo), lambda fh: fh.write(b"through the pipe\n"))
    reader.join(timeout=30)
    assert got == [b"through the pipe\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_device_node_is_written_into_not_replaced(tmp_path):
    node = tmp_path / "nulldev"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # (what /dev/null is)
    except PermissionError:
        pytest.skip("creating a device node needs root")
    write_atomically(str(node), lambda fh: fh.write(b"gone\n"))
    assert stat.S_ISCHR(os.stat(node).st_mode)
    write_atomically(os.devnull, lambda fh: fh.write(b"gone\n"))
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_output_to_dev_stdout_prints_the_body(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))
    res = subprocess.run([*python_command(), "-m", "flashparity", "compare", "a.npy", "a.npy", "--json", "--quiet",
                          "-o", "/dev/stdout"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    bodies = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(bodies) == 2 and bodies[0] == bodies[1] and bodies[0]["ok"] is True


def test_run_out_streams_into_a_fifo(tmp_path):
    fifo = tmp_path / "out.npy"
    reader, got = fifo_with_reader(fifo)
    res = subprocess.run([*python_command(), "-m", "flashparity", "run", "--seq-len", "8", "--num-heads", "2",
                          "--num-kv-heads", "2", "--head-dim", "16", "--out", str(fifo)],
                         capture_output=True, text=True, timeout=120)
    reader.join(timeout=30)
    assert res.returncode == 0, res.stderr
    import io

    assert np.load(io.BytesIO(got[0])).shape == (1, 1, 2, 16) and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_to_dev_stdout_keeps_the_order_of_a_redirected_file(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))
    with open(tmp_path / "log", "wb") as log:
        res = subprocess.run([*python_command(), "-m", "flashparity", "compare", "a.npy", "a.npy", "--quiet",
                              "-o", "/dev/stdout"], stdout=log, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "log").read_text()
    first, rest = text.split("\n", 1)
    assert json.loads(first)["ok"] is True and rest.startswith("tensor ") and rest.rstrip().endswith("no mismatch")


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        write_atomically(str(tmp_path), lambda fh: fh.write(b"x"))


# ---- 3. a comparison that compared nothing is no match ---------------------------------------------


@pytest.mark.parametrize("kind", ["integers", "shapes"])
def test_nothing_compared_reports_nan_and_fails_every_gate(kind, tmp_path, capsys):
    if kind == "integers":  # (of two dtypes: not comparable)
        np.save(tmp_path / "a.npy", np.arange(4, dtype=np.int32))
        np.save(tmp_path / "b.npy", np.arange(4, dtype=np.int16))
    else:
        np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
        np.save(tmp_path / "b.npy", np.zeros((3, 2), np.float32))
    code, out, _ = run_cli(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--json"], capsys)
    body = json.loads(out)
    assert code == 1 and math.isnan(body["max_abs_diff"]) and math.isnan(body["cosine_sim"]) and not body["ok"]
    assert not classify.classify_parity_numerics(body).ok
    (tmp_path / "body.json").write_text(out)
    code, _, _ = run_cli(["classify", "--parity-file", str(tmp_path / "body.json")], capsys)
    assert code == 1


def test_empty_tensors_did_compare(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros((0, 3), np.float32))
    code, out, _ = run_cli(["compare", str(tmp_path / "a.npy"), str(tmp_path / "a.npy"), "--json"], capsys)
    body = json.loads(out)
    assert code == 0 and body["max_abs_diff"] == 0.0 and body["cosine_sim"] == 1.0


# ---- 4. torch's negative and conjugate bits, requires_grad -----------------------------------------


def test_torch_negative_bit_views_are_read_with_their_sign():
    torch = pytest.importorskip("torch")
    c = torch.tensor([1 + 2j, 3 + 4j, 5 + 6j], dtype=torch.complex64)
    x = c.conj().imag
    assert x.is_neg()
    assert fp.parity(x, -c.imag).max_abs_diff == 0.0
    assert fp.parity(x, c.imag.clone()).max_abs_diff == 12.0  # (torch.isclose: 3 mismatches too)
    assert fp.parity(x, c.imag.clone()).mismatches == 3


def test_torch_subclasses_and_outputs_with_lazy_bits():
    torch = pytest.importorskip("torch")

    class Mine(torch.Tensor):  # (a user's subclass, defined outside torch)
        pass

    c = torch.tensor([1 + 2j, 3 + 4j], dtype=torch.complex64)
    x = c.conj().imag.as_subclass(Mine)
    assert x.is_neg() and fp.parity(x, -c.imag).max_abs_diff == 0.0
    q = torch.randn(1, 3, 2, 16)
    for out, what in ((torch.zeros(1, 3, 2, 16, dtype=torch.complex64).conj().imag, "the negative bit"),
                      (torch.zeros(1, 3, 2, 16, requires_grad=True), "requires_grad")):
        with pytest.raises(ValueError, match=f"out has {what} set"):
            fp.attention(q, q, q, out=out)


def test_tensors_that_require_grad_are_read():
    torch = pytest.importorskip("torch")
    w = torch.randn(5, 7, requires_grad=True)
    y = w * 2
    stats = fp.assert_parity(y, (w * 2).detach(), atol=0, rtol=0)
    assert stats.max_abs_diff == 0.0


# ---- 5. streams and devices as inputs --------------------------------------------------------------


def test_a_fifo_input_is_refused_not_waited_on(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))
    os.mkfifo(tmp_path / "f.npy")
    res = subprocess.run([*python_command(), "-m", "flashparity", "compare", "f.npy", "a.npy", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "is a FIFO, not a regular file" in json.loads(res.stdout)["error"]
    # a FIFO standing for a checkpoint index inside a directory
    d = tmp_path / "ckpt"
    d.mkdir()
    np.save(d / "w.npy", np.ones(3, np.float32))
    os.mkfifo(d / "model.safetensors.index.json")
    res = subprocess.run([*python_command(), "-m", "flashparity", "compare", "ckpt", "ckpt", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 1 and "is a FIFO, not a regular file" in json.loads(res.stdout)["error"]


# ---- 6. one line, not a traceback -------------------------------------------------------------------


NEEDS_DIGIT_LIMIT = pytest.mark.skipif(not hasattr(sys, "get_int_max_str_digits"),
                                       reason="Python before 3.10.7 has no limit on integer digits")


@pytest.mark.parametrize("header,needle", [
    (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    pytest.param(b'{"x": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}',
                 "not valid JSON", marks=NEEDS_DIGIT_LIMIT),
    (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "the key 'x' appears twice"),
    (b'{"x": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', "NaN is not a JSON number"),
])
def test_malformed_safetensors_headers_are_bad_files(header, needle, tmp_path, capsys):
    raw_safetensors(tmp_path / "a.safetensors", header, b"\0" * 4)
    code, out, err = run_cli(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors"), "--json"],
                             capsys)
    one_line_error(code, out, err, 1, needle)
    assert json.loads(out)["error"].startswith("bad-file: ")


def test_holes_and_trailing_bytes_in_safetensors_data_are_refused(tmp_path, capsys):
    def entry(lo, hi):
        return {"dtype": "F32", "shape": [(hi - lo) // 4], "data_offsets": [lo, hi]}

    for header, data, needle in (
        ({"x": entry(0, 4), "y": entry(8, 12)}, 12, "4 bytes between tensors 'x' and 'y' belong to no tensor"),
        ({"x": entry(0, 4)}, 8, "cover bytes 0..4 of the data, not all 8"),
        ({"x": entry(4, 8)}, 8, "cover bytes 4..8"),
    ):
        raw_safetensors(tmp_path / "a.safetensors", json.dumps(header).encode(), b"\0" * data)
        code, out, err = run_cli(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors"),
                                  "--json"], capsys)
        one_line_error(code, out, err, 1, needle)


@NEEDS_DIGIT_LIMIT
def test_classify_of_a_huge_integer_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "big.json").write_text('{"max_abs_diff": ' + "9" * 5000 + ', "cosine_sim": 1}')
    code, out, err = run_cli(["classify", "parity", str(tmp_path / "big.json")], capsys)
    one_line_error(code, out, err, 2, "is not valid JSON")
    assert out == "" and err.count("\n") == 1


@pytest.mark.parametrize("argv,needle", [
    (["--num-heads", "8", "--num-kv-heads", "3"], "num_heads (8) must be a multiple of num_kv_heads (3)"),
    (["--window", "5", "-3"], "window must be two integers >= -1"),
    (["--varlen", "0,0"], "varlen must hold at least one query"),
])
def test_kernel_parity_bad_cases_are_usage_errors(argv, needle, capsys):
    code, out, err = run_cli(["kernel", "parity", *argv], capsys)
    one_line_error(code, out, err, 2, needle)
    assert out == "" and err.count("\n") == 1


def test_too_large_a_case_is_one_line(capsys, monkeypatch):
    from flashparity.kernels import kernel_parity as kp

    def no_memory(case):
        raise MemoryError  # (what NumPy raises for --seq-len 3000000000, without allocating here)

    monkeypatch.setattr(kp, "make_inputs", no_memory)
    code, out, err = run_cli(["kernel", "parity", "--seq-len", "3000000000"], capsys)
    one_line_error(code, out, err, 2, "out of memory")


@pytest.mark.parametrize("env,needle", [
    ({"FLASHPARITY_NUM_THREADS": "0"}, "FLASHPARITY_NUM_THREADS must be an integer from 1 to 4096, got '0'"),
    ({"FLASHPARITY_SIMD": "bogus"}, "FLASHPARITY_SIMD must be"),
])
def test_bad_environment_settings_are_usage_errors(env, needle, tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))
    for argv in (["compare", "a.npy", "a.npy"], ["kernel", "parity", "--seq-len", "8"]):
        res = subprocess.run([*python_command(), "-m", "flashparity", *argv], capture_output=True, text=True,
                             cwd=tmp_path, env={**os.environ, **env})
        assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr, res.stderr
        assert needle in res.stderr and res.stderr.count("\n") == 1


# ---- 7. terminal escapes from untrusted names -------------------------------------------------------

EVIL = "x\x1b[2K\rcheck: PASS (Ok)\x1b[8m"


def test_names_from_files_cannot_drive_the_terminal(tmp_path, capsys):
    from test_compare import write_safetensors

    write_safetensors(tmp_path / "a.safetensors", {EVIL: np.ones(3, np.float32), "only\na": np.ones(1, np.float32)})
    write_safetensors(tmp_path / "b.safetensors", {EVIL: np.zeros(3, np.float32)})
    code, out, err = run_cli(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")], capsys)
    assert code == 1
    assert "\x1b" not in out + err and "\r" not in out + err
    assert "\\x1b[2K\\rcheck: PASS (Ok)" in out  # (shown, inert)
    assert not any(line.startswith("check: PASS") for line in out.splitlines())
    assert "only\\na" in out and "\nonly\n" not in out
    code, out, _ = run_cli(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--json"],
                           capsys)
    assert {r["name"] for r in json.loads(out)["tensors"]} == {EVIL}  # (the JSON stays exact)


def test_printable():
    assert printable("layers.0.attn ünïcode") == "layers.0.attn ünïcode"
    assert printable("a\x1bb\rc\nd\u202ee") == "a\\x1bb\\rc\\nd\\u202ee"


# ---- 8. smaller defects ------------------------------------------------------------------------------


def make_dump(path, tensors: dict):
    """A dump directory as fp.dump writes it (manifest + a safetensors shard), without torch."""
    from test_compare import write_safetensors

    path.mkdir()
    write_safetensors(path / "dump-00000.safetensors", tensors)
    entries = [{"key": k, "name": k.split("#")[0], "call": 0, "path": "", "shape": list(v.shape),
                "dtype": v.dtype.name, "device": "cpu", "file": "dump-00000.safetensors"} for k, v in tensors.items()]
    (path / "flashparity-dump.json").write_text(json.dumps({"format": "flashparity-dump", "version": 1,
                                                            "torch": "-", "device": ["cpu"], "entries": entries}))


def test_a_closed_pipe_is_not_an_error_for_dumps_either(tmp_path, capsys, monkeypatch):
    make_dump(tmp_path / "d", {"embed#0": np.ones(4, np.float32)})

    class Closed:
        def write(self, _text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", Closed())
    assert main(["compare", str(tmp_path / "d"), str(tmp_path / "d"), "--quiet"]) == 0
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))
    assert main(["compare", str(tmp_path / "a.npy"), str(tmp_path / "a.npy"), "--quiet"]) == 0


def test_a_npy_file_against_a_directory_is_refused_clearly(tmp_path, capsys):
    (tmp_path / "acts").mkdir()
    np.save(tmp_path / "acts" / "h.npy", np.ones(3, np.float32))
    np.save(tmp_path / "h.npy", np.ones(3, np.float32))
    for argv in ([str(tmp_path / "h.npy"), str(tmp_path / "acts")], [str(tmp_path / "acts"), str(tmp_path / "h.npy")]):
        code, out, err = run_cli(["compare", *argv], capsys)
        one_line_error(code, out, err, 2, "a .npy file's one tensor has no name to match by")
        assert out == ""


def fp8_pair(fmt):
    import ml_dtypes

    rng = np.random.default_rng(8)
    b = rng.standard_normal((5, 7)).astype(np.float32)
    a = (b * 1.05).astype(getattr(ml_dtypes, fmt))
    return a, b.astype(getattr(ml_dtypes, fmt))


def test_fp8_npy_files_as_numpy_writes_them(tmp_path, capsys):
    from flashparity.compare import compare_files
    from flashparity.io import BadFile, load_npy

    for fmt in ("float8_e4m3fn", "float8_e5m2"):
        a, b = fp8_pair(fmt)
        np.save(tmp_path / f"{fmt}-a.npy", a)  # e4m3fn: a 1-byte void descr; e5m2: '<f1' (NumPy cannot load it)
        np.save(tmp_path / f"{fmt}-b.npy", b)
        np.savez(tmp_path / f"{fmt}-a.npz", x=a)
        np.savez(tmp_path / f"{fmt}-b.npz", x=b)
    want = {fmt: fp.parity(*fp8_pair(fmt), atol=0.5) for fmt in ("float8_e4m3fn", "float8_e5m2")}
    pa, pb = str(tmp_path / "float8_e4m3fn-a.npy"), str(tmp_path / "float8_e4m3fn-b.npy")
    # a 1-byte void could be any of ml_dtypes' 1-byte formats: named by the flag, or refused
    code, out, _ = run_cli(["compare", pa, pb, "--json"], capsys)
    row = json.loads(out)["tensors"][0]
    assert code == 1 and row["error"].startswith("unsupported-dtype: void8 vs void8 (1-byte void elements")
    assert "--void1-as float8_e4m3fn" in row["error"]
    # (worker processes exec sys.executable, which the host cannot run under an emulator of aarch64)
    for extra in ([], ["--workers", "2"]) if not emulated() else ([],):
        code, out, _ = run_cli(["compare", pa, pb, "--atol", "0.5", "--void1-as", "float8_e4m3fn", "--json", *extra],
                               capsys)
        row = json.loads(out)["tensors"][0]
        assert code == 0 and row["dtypes"] == ["float8_e4m3fn", "float8_e4m3fn"], out
        assert row["max_abs_diff"] == want["float8_e4m3fn"].max_abs_diff and row["max_ulp_diff"] > 0
    # float8_e5m2's own descr is unambiguous: read as such, in .npy and .npz alike, no flag
    code, out, _ = run_cli(["compare", str(tmp_path / "float8_e5m2-a.npy"), str(tmp_path / "float8_e5m2-b.npy"),
                            "--atol", "0.5", "--json"], capsys)
    row = json.loads(out)["tensors"][0]
    assert code == 0 and row["dtypes"] == ["float8_e5m2", "float8_e5m2"]
    assert row["max_abs_diff"] == want["float8_e5m2"].max_abs_diff
    body = compare_files(str(tmp_path / "float8_e5m2-a.npz"), str(tmp_path / "float8_e5m2-b.npz"), atol=0.5)
    assert body["ok"] and body["tensors"][0]["max_abs_diff"] == want["float8_e5m2"].max_abs_diff
    body = compare_files(str(tmp_path / "float8_e4m3fn-a.npz"), str(tmp_path / "float8_e4m3fn-b.npz"), atol=0.5,
                         void1_as="float8_e4m3fn")
    assert body["ok"] and body["tensors"][0]["dtypes"] == ["float8_e4m3fn", "float8_e4m3fn"]
    e5 = load_npy(str(tmp_path / "float8_e5m2-a.npy"))
    assert e5.dtype.name == "float8_e5m2" and np.array_equal(e5.view(np.uint8), fp8_pair("float8_e5m2")[0].view(np.uint8))
    # bad values and a forged e5m2 header
    code, out, err = run_cli(["compare", pa, pb, "--void1-as", "float8_e4m3"], capsys)
    one_line_error(code, out, err, 2, "invalid choice: 'float8_e4m3'")
    with pytest.raises(ValueError, match="void1_as must be one of float8_e4m3fn, float8_e5m2"):
        compare_files(pa, pb, void1_as="int4")
    raw = (tmp_path / "float8_e5m2-a.npy").read_bytes().replace(b"'shape': (5, 7)", b"'shape': (True, 7)")
    (tmp_path / "forged.npy").write_bytes(raw)  # (NumPy's own checks pass a bool dimension on to the descr)
    with pytest.raises(BadFile, match="is not a valid .npy file: header b"):
        load_npy(str(tmp_path / "forged.npy"))
    from flashparity import io
    from flashparity.cli import _common

    assert _common.FP8_FORMATS == io.FP8_FORMATS


def test_a_one_byte_void_tensor_in_a_directory_is_one_row_not_a_bad_file(tmp_path, capsys):
    import ml_dtypes

    for side in ("x", "y"):
        (tmp_path / side).mkdir()
        np.save(tmp_path / side / "w.npy", np.arange(6, dtype=np.float32))
        np.save(tmp_path / side / "q.npy", np.arange(6).astype(ml_dtypes.int4))  # (saved as 1-byte voids)
    code, out, _ = run_cli(["compare", str(tmp_path / "x"), str(tmp_path / "y"), "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)["tensors"]}
    assert code == 1 and rows["w"]["ok"] and rows["w"]["max_abs_diff"] == 0.0
    assert not rows["q"]["ok"] and "--void1-as" in rows["q"]["error"]


def test_run_reads_fp8_npy_inputs(tmp_path, capsys):
    import ml_dtypes

    q = np.random.default_rng(3).standard_normal((1, 9, 2, 16)).astype(ml_dtypes.float8_e4m3fn)
    for n in ("q", "k", "v"):
        np.save(tmp_path / f"{n}.npy", q)
    argv = ["run", "--attn", "naive", *[x for n in ("q", "k", "v") for x in (f"--{n}", str(tmp_path / f"{n}.npy"))]]
    code, out, err = run_cli(argv, capsys)
    assert code == 1 and "--void1-as" in out + err
    code, out, err = run_cli([*argv, "--void1-as", "float8_e4m3fn", "--out", str(tmp_path / "o.npy")], capsys)
    assert code == 0, (out, err)
    from flashparity.io import load_npy

    want = fp.attention(q, q, q, impl="naive")
    got = load_npy(str(tmp_path / "o.npy"), void2_as_bfloat16=True, void1_as="float8_e4m3fn")
    assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))


def test_python_floats_are_0d_arrays_and_huge_windows_are_no_window():
    assert fp.parity(1.0, 2.0).max_abs_diff == 1.0
    with pytest.raises(TypeError, match="a has dtype int64"):
        fp.parity(3, 4)
    q = np.random.default_rng(1).standard_normal((1, 5, 2, 16)).astype(np.float32)
    for impl in ("naive", "flash2"):
        wide = fp.attention(q, q, q, impl=impl, window=(2**63, 2**70))
        assert np.array_equal(wide, fp.attention(q, q, q, impl=impl))


def test_ctrl_c_stops_both_runs_of_compare_modules_at_their_next_module():
    torch = pytest.importorskip("torch")
    import signal
    import time

    class Slow(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.05)
            return x + 1

    def model():
        return torch.nn.Sequential(*[Slow() for _ in range(200)])  # 10 s a run, uninterrupted

    main_thread = threading.main_thread().ident  # (a terminal's Ctrl-C: SIGINT, which wakes a waiting join)
    timer = threading.Timer(0.5, signal.pthread_kill, (main_thread, signal.SIGINT))
    # (Python's own handler, whatever this process inherited: a shell starts background jobs with
    # SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            fp.compare_modules(model(), model(), torch.zeros(3))
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < 5
    assert not [t for t in threading.enumerate() if t.name.startswith("flashparity-run-") and t.is_alive()]


# ---- what the adversarial pass found right, kept as tests ---------------------------------------------


def test_an_existing_output_is_kept_when_the_input_is_rejected(tmp_path, capsys):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))
    report = tmp_path / "report.json"
    report.write_text("previous\n")
    code, out, _ = run_cli(["compare", str(tmp_path / "bad.npy"), str(tmp_path / "a.npy"), "--json",
                            "-o", str(report)], capsys)
    assert code == 1 and json.loads(out)["error"].startswith("bad-file")
    assert report.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.npy", "bad.npy", "report.json"]


def test_mismatches_agree_with_torch_isclose_on_special_values():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(34)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, 65504.0, 1e38, -1.0])
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    for trial in range(300):
        ta, tb = dtypes[trial % 4], dtypes[(trial // 4) % 4]
        n = int(rng.integers(1, 40))
        a = rng.standard_normal(n)
        b = a + rng.standard_normal(n) * 10.0 ** rng.integers(-6, 1)
        for x in (a, b):
            pick = rng.random(n) < 0.3
            x[pick] = rng.choice(specials, int(pick.sum()))
        a_t, b_t = torch.from_numpy(a).to(ta), torch.from_numpy(b).to(tb)
        atol, rtol = float(10.0 ** rng.integers(-6, 0)), float(10.0 ** rng.integers(-6, 0))
        want = int((~torch.isclose(a_t.double(), b_t.double(), rtol=rtol, atol=atol)).sum())
        assert fp.parity(a_t, b_t, atol=atol, rtol=rtol).mismatches == want, (ta, tb, a, b)


def test_each_comparison_takes_its_hooks_away():
    torch = pytest.importorskip("torch")

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x) * 2

    a, b = Twice(), Twice()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4)
    for _ in range(2):  # (the hooks of the first comparison are gone, the second sees only its own runs)
        rep = fp.compare_modules(a, b, x)
        assert rep.ok and [e.key for e in rep.entries] == ["lin#0", "<model>#0"]
    assert not a.lin._forward_hooks and not b.lin._forward_hooks


def test_fp8_outputs_are_compared_when_tolerances_are_given():
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("torch has no float8_e4m3fn")

    class ToFp8(torch.nn.Module):
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def forward(self, x):
            return (x + self.shift).to(torch.float8_e4m3fn)

    x = torch.linspace(-2, 2, 16)
    rep = fp.compare_modules(ToFp8(0.0), ToFp8(0.5), x)
    assert rep.ok and rep.entries[0].rule == "not compared" and "give atol and rtol" in rep.entries[0].error
    rep = fp.compare_modules(ToFp8(0.0), ToFp8(0.5), x, atol=0.1, rtol=0.0)
    assert not rep.ok and rep.entries[0].stats.max_abs_diff >= 0.5
    rep = fp.compare_modules(ToFp8(0.0), ToFp8(0.0), x, atol=0.0, rtol=0.0)
    assert rep.ok and rep.entries[0].stats.max_abs_diff == 0.0
