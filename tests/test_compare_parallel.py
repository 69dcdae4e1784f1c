"""flashparity compare on directories (sharded checkpoints), and the same comparison run in process,
on a pool of worker processes and on a Dask LocalCluster: the same report, bit for bit; a worker
killed mid-run loses nothing and counts nothing twice."""

from __future__ import annotations

import json
import os
import signal

import ml_dtypes
import numpy as np
import pytest
from emulation import emulated
from test_compare import run_cli, write_safetensors

import flashparity as fp
from flashparity.compare import files, tasks


def shard(tmp, name, tensors: dict, groups: list[list[str]]):
    """A Hugging Face style sharded checkpoint: `groups` of tensor names per shard, and the index."""
    d = tmp / name
    d.mkdir()
    wmap = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(d / fname, {n: tensors[n] for n in group})
        wmap.update({n: fname for n in group})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": wmap}))
    (d / "config.json").write_text("{}")  # (other files are ignored)
    return d


@pytest.fixture
def checkpoints(tmp_path):
    rng = np.random.default_rng(11)
    ref = {
        "embed.weight": rng.standard_normal((257, 33)).astype(np.float32),
        "layers.0.attn.q.weight": rng.standard_normal((64, 64)).astype(ml_dtypes.bfloat16),
        "layers.0.mlp.up.weight": rng.standard_normal((1001, 7)).astype(np.float32),
        "layers.1.attn.q.weight": rng.standard_normal((64, 64)).astype(ml_dtypes.bfloat16),
        "norm.weight": rng.standard_normal(33).astype(np.float16),
    }
    test = {k: (v.astype(np.float64) * (1 + 1e-3 * rng.standard_normal(v.shape))).astype(v.dtype)
            for k, v in ref.items()}
    test["layers.0.mlp.up.weight"][500, 3] = np.nan
    names = list(ref)
    a = shard(tmp_path, "a", test, [names[:2], names[2:3], names[3:]])
    b = shard(tmp_path, "b", ref, [names[3:], names[:3]])  # sharded differently, in another order
    return a, b, test, ref


def test_sharded_checkpoints_compare_by_name(checkpoints, capsys):
    a, b, test, ref = checkpoints
    code, out, _ = run_cli(["compare", str(a), str(b), "--json"], capsys)
    body = json.loads(out)
    assert code == 1 and body["complete"] and not body["ok"]  # (the checkpoints differ: exit 1)
    rows = {r["name"]: r for r in body["tensors"]}
    assert list(rows) == list(test)  # A's order (its index's)
    for name, r in rows.items():
        want = fp.parity(test[name], ref[name]).to_dict()
        for k in ("numel", "max_abs_diff", "max_abs_index", "mismatches", "nonfinite", "max_ulp_diff",
                  "abs_diff_histogram"):
            assert r[k] == want[k] or (r[k] != r[k] and want[k] != want[k]), (name, k)


def test_a_checkpoint_named_by_a_relative_path(checkpoints, capsys, monkeypatch):
    a, b, _, _ = checkpoints
    monkeypatch.chdir(a)
    code, out, _ = run_cli(["compare", ".", str(b), "--json"], capsys)
    assert code == 1 and len(json.loads(out)["tensors"]) == 5


def test_index_errors_name_the_problem(checkpoints, capsys):
    a, b, _, _ = checkpoints
    index = a / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["norm.weight"] = "model-00001-of-00003.safetensors"
    index.write_text(json.dumps(doc))
    code, out, _ = run_cli(["compare", str(a), str(b), "--json"], capsys)
    assert code == 1 and "maps tensor 'norm.weight' to 'model-00001-of-00003.safetensors'" in out
    doc["weight_map"]["norm.weight"] = "../outside.safetensors"
    index.write_text(json.dumps(doc))
    code, out, _ = run_cli(["compare", str(a), str(b), "--json"], capsys)
    assert code == 1 and "outside its directory" in out


def test_directories_of_npy_and_npz_match_by_relative_path(tmp_path, capsys):
    rng = np.random.default_rng(4)
    for side in ("a", "b"):
        (tmp_path / side / "layer0").mkdir(parents=True)
    x, y = rng.standard_normal((5, 6)), rng.standard_normal(9).astype(np.float32)
    np.save(tmp_path / "a" / "layer0" / "out.npy", x)
    np.save(tmp_path / "b" / "layer0" / "out.npy", x + 1e-9)
    np.savez(tmp_path / "a" / "acts.npz", h=y, only_a=y)
    np.savez(tmp_path / "b" / "acts.npz", h=y)
    code, out, _ = run_cli(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"], capsys)
    body = json.loads(out)
    assert code == 1 and not body["complete"]  # acts/only_a is on one side only
    assert [r["name"] for r in body["tensors"]] == ["acts/h", "layer0/out"]
    assert body["only_in_a"] == ["acts/only_a"] and body["only_in_b"] == []
    assert body["tensors"][1]["max_abs_diff"] == pytest.approx(1e-9, rel=1e-6)


def test_untrusted_index_files(checkpoints, capsys):
    a, b, _, _ = checkpoints
    index = a / "model.safetensors.index.json"
    for wmap, why in (({}, "maps no tensors"), ({"x": "sh\u0000ard"}, "outside its directory"),
                      ({"x": "/etc/passwd"}, "outside its directory"), ({"x": "nope.safetensors"}, "does not exist")):
        index.write_text(json.dumps({"weight_map": wmap}))
        code, out, _ = run_cli(["compare", str(a), str(b), "--json"], capsys)
        assert code == 1 and why in json.loads(out)["error"], (wmap, out)


def test_a_symlinked_shard_is_followed(checkpoints, tmp_path, capsys):
    # (a Hugging Face cache snapshot links each file to a blob outside the snapshot directory)
    a, b, _, _ = checkpoints
    snap = tmp_path / "snapshot"
    snap.mkdir()
    for f in a.iterdir():
        (snap / f.name).symlink_to(f)
    code, out, _ = run_cli(["compare", str(snap), str(b), "--json"], capsys)
    assert code == 1 and len(json.loads(out)["tensors"]) == 5


def test_in_process_progress_is_per_chunk_and_merges_as_one_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "CHUNK_BYTES", 4096)
    rng = np.random.default_rng(12)
    b = rng.standard_normal(100_000).astype(np.float32)
    a = (b * (1 + 1e-4 * rng.standard_normal(b.shape))).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    calls = []
    body = files.compare_files(str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), progress=lambda d, t: calls.append(d))
    assert len(calls) == -(-100_000 // 1024) and calls[-1] == 800_000
    # the chunks merged one after another, as one pass over them would (not per task)
    one_pass = None
    for s in range(0, 100_000, 1024):
        part = fp.parity(a[s:s + 1024], b[s:s + 1024])
        one_pass = part if one_pass is None else one_pass.merge(part)
    assert body["tensors"][0]["pcc"] == one_pass.pcc and body["tensors"][0]["cosine_sim"] == one_pass.cosine_sim


def test_a_name_in_two_files_of_a_directory_is_an_error(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    write_safetensors(d / "x.safetensors", {"w": np.ones(3, np.float32)})
    write_safetensors(d / "y.safetensors", {"w": np.ones(3, np.float32)})
    code, out, _ = run_cli(["compare", str(d), str(d), "--json"], capsys)
    assert code == 1 and "tensor 'w' is in both 'x.safetensors' and 'y.safetensors'" in out


@pytest.fixture
def many_tasks(tmp_path, monkeypatch):
    """Two directories whose comparison is split into ~200 tasks of 3 chunks of 4 KiB."""
    monkeypatch.setattr(tasks, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(tasks, "TASK_CHUNKS", 3)
    rng = np.random.default_rng(9)
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    for i in range(4):
        b = rng.standard_normal((150 + i, 301)).astype(np.float32)
        a = (b + 1e-5 * rng.standard_normal(b.shape)).astype(np.float32)
        a.flat[1000 * (i + 1)] += 1e-3 * (i + 1)
        if i < 3:
            np.save(tmp_path / "a" / f"t{i}.npy", a)  # (a .npy file's tensor is named after the file)
        else:
            write_safetensors(tmp_path / "a" / "last.safetensors", {"t3": a})
        write_safetensors(tmp_path / "b" / f"shard{i}.safetensors", {f"t{i}": b})
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    return str(a_dir), str(b_dir)


needs_spawn = pytest.mark.skipif(emulated(), reason="worker processes exec sys.executable, which the host cannot "
                                 "run under an emulator of another architecture")


def canonical(body) -> str:
    return json.dumps(body, sort_keys=True)  # (NaN written as NaN: equal bits give equal text)


@needs_spawn
def test_workers_give_the_same_bits_as_in_process(many_tasks):
    a, b = many_tasks
    serial = files.compare_files(a, b, atol=1e-5, rtol=1e-4)
    assert serial["complete"] and len(serial["tensors"]) == 4
    calls = []
    pooled = files.compare_files(a, b, atol=1e-5, rtol=1e-4, workers=2, progress=lambda d, t: calls.append((d, t)))
    assert canonical(pooled) == canonical(serial)
    total = calls[-1][1]
    assert calls[-1][0] == total == sum(150 + i for i in range(4)) * 301 * 8  # every byte counted once
    # and the tasks really were many: each tensor split
    assert len(calls) > 50


@needs_spawn
def test_a_killed_pool_worker_has_its_tasks_rerun(many_tasks, monkeypatch):
    import multiprocessing

    from flashparity.compare import engines as _parallel

    pools = []

    class Counted(_parallel.ProcessPoolExecutor):
        def __init__(self, *args, **kw):
            pools.append(self)
            super().__init__(*args, **kw)

    monkeypatch.setattr(_parallel, "ProcessPoolExecutor", Counted)
    monkeypatch.setattr(tasks, "TASK_CHUNKS", 1)  # (~180 tasks: most still pending at the kill)
    a, b = many_tasks
    serial = files.compare_files(a, b)
    state = {"killed": 0, "done": 0}

    def progress(done, total):
        state["done"] += 1
        if state["done"] == 5 and not state["killed"]:
            victims = multiprocessing.active_children()
            assert victims
            os.kill(victims[0].pid, signal.SIGKILL)
            state["killed"] = 1
            state["bytes"] = (done, total)

    body = files.compare_files(a, b, workers=2, progress=progress)
    assert state["killed"] == 1 and len(pools) == 2  # the broken pool, and the one that finished the run
    assert canonical(body) == canonical(serial)


@needs_spawn
def test_workers_flag_on_the_cli(many_tasks, capsys):
    a, b = many_tasks
    code, out, _ = run_cli(["compare", a, b, "--json", "--quiet"], capsys)
    code2, out2, _ = run_cli(["compare", a, b, "--json", "--quiet", "--workers", "2"], capsys)
    assert code == code2 == 1 and out == out2  # (the tensors differ: exit 1 in every mode)
    for bad, why in ((["--workers", "0"], "--workers must be >= 1, got '0'"),
                     (["--workers", "x"], "--workers must be an integer, got 'x'"),
                     (["--workers", "2", "--dask", "tcp://127.0.0.1:1"], "not allowed with argument")):
        code, out, err = run_cli(["compare", a, b, *bad], capsys)
        assert code == 2 and why in err and not out


@pytest.fixture
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  scheduler_port=0) as c, distributed.Client(c) as client:
        yield c, client


@needs_spawn
def test_dask_gives_the_same_bits_and_survives_a_killed_worker(many_tasks, cluster, monkeypatch):
    a, b = many_tasks
    c, client = cluster
    serial = files.compare_files(a, b, atol=1e-5)
    on_dask = files.compare_files(a, b, atol=1e-5, dask=client)
    assert canonical(on_dask) == canonical(serial)

    monkeypatch.setattr(tasks, "TASK_CHUNKS", 1)  # (~180 tasks: most still to run at the kill)
    pids = list(client.run(os.getpid).values())
    state = {"done": 0, "killed": False, "indices": []}

    def progress(done, total):
        state["done"] += 1
        state["last"] = (done, total)
        if state["done"] == 3:
            os.kill(pids[0], signal.SIGKILL)
            state["killed"] = True

    serial1 = files.compare_files(a, b, atol=1e-5)  # (the same bits with 1-chunk tasks)
    assert canonical(serial1) == canonical(serial)
    again = files.compare_files(a, b, atol=1e-5, dask=c.scheduler_address, progress=progress)
    assert state["killed"] and state["done"] > 3
    assert canonical(again) == canonical(serial)
    assert state["last"][0] == state["last"][1]  # every byte once: the reruns are not counted twice


@needs_spawn
def test_dask_on_the_cli(many_tasks, cluster, capsys):
    a, b = many_tasks
    c, _ = cluster
    code, out, _ = run_cli(["compare", a, b, "--json", "--quiet", "--dask", c.scheduler_address], capsys)
    code2, out2, _ = run_cli(["compare", a, b, "--json", "--quiet"], capsys)
    assert code == code2 == 1 and out == out2


def test_an_unreachable_scheduler_is_a_usage_error(many_tasks, capsys, monkeypatch):
    pytest.importorskip("distributed")
    from flashparity.compare import engines as _parallel

    monkeypatch.setattr(_parallel, "CONNECT_TIMEOUT_S", 1)
    a, b = many_tasks
    code, out, err = run_cli(["compare", a, b, "--dask", "tcp://127.0.0.1:9"], capsys)
    assert code == 2 and not out and "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in err


def test_the_progress_bar_counts_bytes(capsys):
    pytest.importorskip("tqdm")
    from flashparity.cli.compare import _Progress

    bar = _Progress(enabled=True)
    for done in (1 << 20, 3 << 20, 4 << 20):
        bar(done, 4 << 20)
    assert bar.bar.n == 4 << 20 and bar.bar.total == 4 << 20
    bar.close()
    assert "compare" in capsys.readouterr().err
    quiet = _Progress(enabled=False)
    quiet(1, 2)
    quiet.close()
    assert quiet.bar is None and capsys.readouterr().err == ""
