"""flashparity compare: .npy/.npz/.safetensors, streamed chunks, bad files, bounded memory."""

from __future__ import annotations

import json
import struct
import subprocess

import ml_dtypes
import numpy as np
import pytest
from emulation import python_command

import flashparity as fp
from flashparity import io as fio
from flashparity.compare import stream, tasks
from flashparity.io import npy, npz
from flashparity.cli import main


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write_safetensors(path, tensors: dict, *, header_override=None, pad=b""):
    """A minimal safetensors writer (and corrupter) for the tests."""
    header, blobs, offset = {}, [], 0
    codes = {"float32": "F32", "float16": "F16", "float64": "F64", "bfloat16": "BF16", "int32": "I32",
             "int64": "I64", "int8": "I8", "uint16": "U16", "bool": "BOOL",
             "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": codes[arr.dtype.name], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if header_override is not None:
        header = header_override(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs) + pad)


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    b = rng.standard_normal((300, 41)).astype(np.float32)
    a = (b + 1e-3 * rng.standard_normal(b.shape)).astype(np.float32)
    a[123, 7] = 5.0
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    return tmp_path, a, b


EXACT = ("numel", "max_abs_diff", "max_abs_index", "max_rel_diff", "max_rel_index", "mismatches", "nonfinite", "equal_inf",
         "max_ulp_diff", "abs_diff_histogram")


def test_npy_compare_equals_parity(pair, capsys, monkeypatch):
    tmp, a, b = pair
    monkeypatch.setattr(tasks, "CHUNK_BYTES", 4096)  # many chunks, merged
    code, out, _ = run_cli(["compare", str(tmp / "a.npy"), str(tmp / "b.npy"), "--atol", "1e-3", "--json"], capsys)
    assert code == 1  # (outside atol: exit 1)
    body = json.loads(out)
    (row,) = body["tensors"]
    want = fp.parity(a, b, atol=1e-3).to_dict()
    for key in EXACT:
        assert row[key] == json.loads(json.dumps(want[key])), key
    assert row["max_abs_index"] == [123, 7]
    assert row["cosine_sim"] == pytest.approx(want["cosine_sim"], abs=1e-15)
    assert body["max_abs_diff"] == row["max_abs_diff"] and body["complete"] is True


def test_human_table_and_check(pair, capsys):
    tmp, _, _ = pair
    code, out, _ = run_cli(["compare", str(tmp / "a.npy"), str(tmp / "b.npy")], capsys)
    assert code == 1 and "300x41" in out and "worst max_abs_diff" in out
    code, out, _ = run_cli(["compare", str(tmp / "a.npy"), str(tmp / "b.npy"), "--check", "--json"], capsys)
    assert code == 1 and json.loads(out)["check"]["outcome"] == "MaxAbsDiffExceedsTolerance"
    # within --atol 10, and still failed by --check's fixed gate on top
    code, out, _ = run_cli(["compare", str(tmp / "a.npy"), str(tmp / "b.npy"), "--atol", "10", "--check", "--json"],
                           capsys)
    body = json.loads(out)
    assert code == 1 and body["ok"] is True and body["check"]["ok"] is False
    code, out, _ = run_cli(["compare", str(tmp / "a.npy"), str(tmp / "a.npy"), "--check", "--json"], capsys)
    assert code == 0 and json.loads(out)["check"]["ok"] is True


def test_npz_matched_by_name(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x, y, z = (rng.standard_normal(n).astype(np.float32) for n in (10, 20, 30))
    np.savez(tmp_path / "a.npz", x=x, y=y, extra=z)
    np.savez_compressed(tmp_path / "b.npz", y=y + 1, x=x, other=z)
    code, out, _ = run_cli(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json"], capsys)
    body = json.loads(out)
    assert code == 1  # tensors only in one file: listed, and the comparison is incomplete
    assert body["only_in_a"] == ["extra"] and body["only_in_b"] == ["other"]
    rows = {r["name"]: r for r in body["tensors"]}
    assert rows["x"]["max_abs_diff"] == 0.0 and rows["y"]["max_abs_diff"] == pytest.approx(1.0, abs=1e-6)


def test_safetensors_bfloat16_and_float16(tmp_path, capsys):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 33)).astype(ml_dtypes.bfloat16)
    h = rng.standard_normal(100).astype(np.float16)
    write_safetensors(tmp_path / "a.safetensors", {"w": w, "h": h})
    w2 = w.astype(np.float32)
    w2[3, 4] += 1
    write_safetensors(tmp_path / "b.safetensors", {"h": h, "w": w2.astype(ml_dtypes.bfloat16)})
    code, out, _ = run_cli(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--json"],
                           capsys)
    body = json.loads(out)
    rows = {r["name"]: r for r in body["tensors"]}
    assert code == 1 and rows["w"]["ok"] is False and rows["h"]["ok"] is True and rows["h"]["max_abs_diff"] == 0.0
    assert rows["w"]["dtypes"] == ["bfloat16", "bfloat16"] and rows["w"]["max_abs_index"] == [3, 4]


def test_safetensors_fp8_against_the_bfloat16_checkpoint(tmp_path, capsys):
    # an FP8 conversion of a checkpoint, checked against it: max_abs_diff exact, ULPs in FP8
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((64, 33)) * 3).astype(ml_dtypes.bfloat16)
    write_safetensors(tmp_path / "ref.safetensors", {"w": w, "g": w[:5]})
    w8, g8 = w.astype(ml_dtypes.float8_e4m3fn), w[:5].astype(ml_dtypes.float8_e5m2)
    write_safetensors(tmp_path / "fp8.safetensors", {"w": w8, "g": g8})
    code, out, _ = run_cli(["compare", str(tmp_path / "fp8.safetensors"), str(tmp_path / "ref.safetensors"), "--json",
                            "--atol", "0.5"], capsys)
    rows = {r["name"]: r for r in json.loads(out)["tensors"]}
    assert code == 0
    assert rows["w"]["dtypes"] == ["float8_e4m3fn", "bfloat16"] and rows["g"]["dtypes"] == ["float8_e5m2", "bfloat16"]
    for name, a, b in (("w", w8, w), ("g", g8, w[:5])):
        assert rows[name]["max_abs_diff"] == float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        assert rows[name]["max_ulp_diff"] == 0 and rows[name]["ulp_dtype"] == a.dtype.name


def test_safetensors_written_by_the_library(tmp_path, capsys):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    safetensors_numpy.save_file({"x": x, "y": x * 2}, str(tmp_path / "a.safetensors"))
    safetensors_numpy.save_file({"x": x, "y": x * 2 + 1}, str(tmp_path / "b.safetensors"))
    code, out, _ = run_cli(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--json"],
                           capsys)
    rows = {r["name"]: r for r in json.loads(out)["tensors"]}
    assert code == 1 and rows["x"]["max_abs_diff"] == 0 and rows["y"]["max_abs_diff"] == 1


def test_void2_bfloat16_npy_needs_the_flag(tmp_path, capsys):
    x = np.arange(8, dtype=np.float32).astype(ml_dtypes.bfloat16)
    np.save(tmp_path / "a.npy", x)  # NumPy stores ml_dtypes bfloat16 as 2-byte void
    np.save(tmp_path / "b.npy", x)
    code, out, _ = run_cli(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--json"], capsys)
    assert code == 1 and "--void2-as-bfloat16" in json.loads(out)["error"]
    code, out, _ = run_cli(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--void2-as-bfloat16",
                            "--json"], capsys)
    assert code == 0 and json.loads(out)["tensors"][0]["dtypes"] == ["bfloat16", "bfloat16"]


def _bad_files(tmp):
    good = np.arange(6, dtype=np.float32)
    np.save(tmp / "good.npy", good)
    raw = (tmp / "good.npy").read_bytes()
    (tmp / "truncated.npy").write_bytes(raw[:-8])
    np.save(tmp / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp / "garbage.bin").write_bytes(b"\x00\x01garbage")
    write_safetensors(tmp / "longheader.safetensors", {"x": good},
                      header_override=lambda h: h)
    data = (tmp / "longheader.safetensors").read_bytes()
    (tmp / "longheader.safetensors").write_bytes(struct.pack("<Q", 10**9) + data[8:])
    write_safetensors(tmp / "overlap.safetensors", {"x": good, "y": good},
                      header_override=lambda h: {**h, "y": {**h["y"], "data_offsets": [8, 32]}})
    write_safetensors(tmp / "unknown.safetensors", {"x": good},
                      header_override=lambda h: {"x": {**h["x"], "dtype": "F12"}})
    write_safetensors(tmp / "outside.safetensors", {"x": good},
                      header_override=lambda h: {"x": {**h["x"], "data_offsets": [0, 4000]}})
    write_safetensors(tmp / "sizemismatch.safetensors", {"x": good},
                      header_override=lambda h: {"x": {**h["x"], "shape": [7]}})


@pytest.mark.parametrize("name,msg", [
    ("truncated.npy", "is truncated"),
    ("pickled.npy", "Python objects"),
    ("garbage.bin", ""),
    ("longheader.safetensors", "header length 1000000000 exceeds the file"),
    ("overlap.safetensors", "overlap"),
    ("unknown.safetensors", "unknown dtype 'F12'"),
    ("outside.safetensors", "fall outside the data"),
    ("sizemismatch.safetensors", "expected"),
])
def test_bad_files_are_rejected_cleanly(name, msg, tmp_path, capsys):
    _bad_files(tmp_path)
    code, out, err = run_cli(["compare", str(tmp_path / name), str(tmp_path / "good.npy"), "--json"], capsys)
    assert code == 1, (out, err)
    error = json.loads(out)["error"]
    assert error.startswith("bad-file:") and msg in error
    assert "Traceback" not in err


def test_shape_mismatch_and_missing_file(pair, tmp_path, capsys):
    tmp, a, _ = pair
    np.save(tmp_path / "c.npy", a[:10])
    code, out, _ = run_cli(["compare", str(tmp / "a.npy"), str(tmp_path / "c.npy"), "--json"], capsys)
    assert code == 1 and json.loads(out)["tensors"][0]["error"].startswith("shape-mismatch")
    code, out, err = run_cli(["compare", str(tmp / "a.npy"), str(tmp_path / "nope.npy")], capsys)
    assert code == 2 and out == "" and "cannot read" in err and err.count("\n") == 1


def test_large_files_stream_with_bounded_memory(tmp_path):
    # A 2 GiB pair (two 1 GiB files) compared in a fresh process whose peak RSS stays far below it.
    n = 256 << 20  # float32 elements: 1 GiB per file
    for name, fill in (("a.npy", 1.0), ("b.npy", 1.5)):
        mm = np.lib.format.open_memmap(tmp_path / name, mode="w+", dtype=np.float32, shape=(n,))
        mm[:] = fill
        mm[n - 3] = 9.0 if name == "a.npy" else fill
        mm.flush()
        del mm
    code = (
        "import re, sys\n"
        "from flashparity.cli import main\n"
        f"rc = main(['compare', {str(tmp_path / 'a.npy')!r}, {str(tmp_path / 'b.npy')!r}, '--json', '--quiet'])\n"
        "# VmHWM: this process image's peak RSS (ru_maxrss would carry the forking parent's)\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    res = subprocess.run([*python_command(), "-c", code], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr  # (the tensors differ: exit 1)
    body = json.loads(res.stdout)
    (row,) = body["tensors"]
    assert row["numel"] == n and row["max_abs_diff"] == 7.5 and row["max_abs_index"] == [n - 3]
    peak_mib = int(res.stderr.strip().splitlines()[-1]) / 1024
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB for two 1 GiB files"


def test_fortran_order_npy_compares_in_c_order(tmp_path, capsys):
    rng = np.random.default_rng(3)
    a = np.asfortranarray(rng.standard_normal((40, 7)).astype(np.float32))
    b = a.copy(order="C")
    b[5, 6] += 1
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    code, out, _ = run_cli(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--json"], capsys)
    row = json.loads(out)["tensors"][0]
    assert code == 1 and row["max_abs_index"] == [5, 6] and row["max_abs_diff"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_npz_members_stream_in_chunks(tmp_path, capsys, monkeypatch, compress):
    # stored members are byte ranges of the archive (positioned reads, CRC-32 checked on the way);
    # deflated ones stream through zlib; both in many chunks, both exact
    monkeypatch.setattr(tasks, "CHUNK_BYTES", 1000)  # not a multiple of any element size
    monkeypatch.setattr(npz, "_SKIP_BYTES", 16)  # a deflated member's header skipped in several reads
    rng = np.random.default_rng(8)
    a = {"w": rng.standard_normal((97, 13)).astype(np.float32), "h": rng.standard_normal(301).astype(np.float16)}
    b = {k: (v + v.dtype.type(1e-2) * rng.standard_normal(v.shape).astype(v.dtype)).astype(v.dtype) for k, v in a.items()}
    save = np.savez_compressed if compress else np.savez
    save(tmp_path / "a.npz", **a)
    save(tmp_path / "b.npz", **b)
    code, out, _ = run_cli(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json"], capsys)
    assert code == 1  # (the tensors differ: exit 1)
    rows = {r["name"]: r for r in json.loads(out)["tensors"]}
    for name in a:
        want = fp.parity(a[name], b[name]).to_dict()
        for key in EXACT:
            assert rows[name][key] == json.loads(json.dumps(want[key])), (name, key)


def _flip_a_data_byte(path):
    # the one member's data lies between its local header and the central directory
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[26:30])
    start, end = 30 + name_len + extra_len, raw.rfind(b"PK\x01\x02")
    raw[(start + end) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_npz_corruption_is_a_bad_file(tmp_path, capsys, monkeypatch, compress):
    monkeypatch.setattr(tasks, "CHUNK_BYTES", 4096)
    x = np.random.default_rng(9).standard_normal(5000).astype(np.float32)
    (np.savez_compressed if compress else np.savez)(tmp_path / "a.npz", x=x)
    np.savez(tmp_path / "b.npz", x=x)
    _flip_a_data_byte(tmp_path / "a.npz")
    code, out, err = run_cli(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json"], capsys)
    body = json.loads(out)
    assert code == 1 and body["error"].startswith("bad-file:"), body
    assert ("CRC" in body["error"] or "corrupt" in body["error"]) and "Traceback" not in err


def test_a_file_truncated_while_it_is_read_is_an_error(tmp_path):
    # the header promised more than the file holds once reading starts: an error, never an answer
    x = np.arange(100_000, dtype=np.float32)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x)
    (ta,) = fio.open_tensors(str(tmp_path / "a.npy"))
    with open(tmp_path / "a.npy", "r+b") as fh:
        fh.truncate(50_000)
    (tb,) = fio.open_tensors(str(tmp_path / "b.npy"))
    streamer = stream.PairStreamer(16 << 10)
    with pytest.raises(fio.BadFile, match="ended early"):
        for _ in streamer.chunks(ta, tb):
            pass
    streamer.close()


def test_big_endian_npy_compares_like_native(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tasks, "CHUNK_BYTES", 1000)
    rng = np.random.default_rng(10)
    a = rng.standard_normal(3001).astype(np.float32)
    b = a + np.float32(1e-3)
    np.save(tmp_path / "a.npy", a.astype(">f4"))
    np.save(tmp_path / "b.npy", b)
    code, out, _ = run_cli(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--json"], capsys)
    row = json.loads(out)["tensors"][0]
    want = fp.parity(a, b).to_dict()
    assert code == 1 and all(row[k] == json.loads(json.dumps(want[k])) for k in EXACT)


def _npy_bytes(header: str, data: bytes) -> bytes:
    h = header.encode() + b" " * (64 - 10 - len(header) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data


@pytest.mark.parametrize("make, msg", [
    (lambda p: p.write_bytes(_npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }", b"")),
     "negative dimension"),
    (lambda p: _zip_with_member(p, "x.npy", np.save, extra=b"0123456789abcdef"), "holds"),
    (lambda p: _zip_with_member(p, "x\udcff.npy", np.save, utf8_flag=True), "not a valid .npz"),
], ids=["negative-dim", "bytes-after-member-data", "bad-utf8-name"])
def test_more_malformed_files_are_bad_files(make, msg, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    make(bad)
    np.save(tmp_path / "ok.npy", np.ones(4, np.float32))
    code, out, err = run_cli(["compare", str(bad), str(tmp_path / "ok.npy"), "--json"], capsys)
    body = json.loads(out)
    assert code == 1 and body["error"].startswith("bad-file:") and msg in body["error"], body
    assert "Traceback" not in err


def _zip_with_member(path, name, save, extra=b"", utf8_flag=False):
    import io
    import zipfile

    buf = io.BytesIO()
    save(buf, np.arange(8, dtype=np.float32))
    payload = buf.getvalue() + extra
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", payload)
    data = bytearray(raw.getvalue())
    if utf8_flag:  # the name's bytes are not UTF-8 although the zip says they are
        for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
            at = data.find(sig)
            data[at + flag_at + 1] |= 0x08  # general purpose bit 11 (high byte): UTF-8 names
            data[at + name_at] = 0xFF
    path.write_bytes(bytes(data))


def test_deflated_members_share_one_directory_read(tmp_path, capsys, monkeypatch):
    # many small deflated members: the archive's directory is read once per file, not per member
    import zipfile

    arrays = {f"t{i}": np.full(4, i, np.float32) for i in range(300)}
    np.savez_compressed(tmp_path / "a.npz", **arrays)
    np.savez_compressed(tmp_path / "b.npz", **arrays)
    opened = []
    real = zipfile.ZipFile

    class Counting(real):
        def __init__(self, *a, **kw):
            opened.append(a[0] if a else kw.get("file"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(zipfile, "ZipFile", Counting)
    code, out, _ = run_cli(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json"], capsys)
    assert code == 0 and len(json.loads(out)["tensors"]) == 300
    assert len(opened) == 2, opened


def test_files_are_read_never_mapped(tmp_path, monkeypatch):
    a = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    np.save(tmp_path / "f.npy", a)
    got = fio.load_npy(str(tmp_path / "f.npy"))
    assert type(got) is np.ndarray and not isinstance(got, np.memmap) and np.array_equal(got, a)
    monkeypatch.setattr(npy, "FORTRAN_MAX_BYTES", 16)
    with pytest.raises(fio.BadFile, match="re-save it in C order"):
        fio.open_tensors(str(tmp_path / "f.npy"))
