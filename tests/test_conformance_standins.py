"""The adapters of kernels that need a GPU (FlashAttention-2 and -3, FlashInfer, xformers) and their
calling conventions, against stand-ins in tests/standins/ that follow each convention exactly (CPU
torch math): each adapter passes a correct stand-in, and a stand-in with a convention's classic
fault (reading a paged cache past its length, swapped cu_seqlens, a natural-log LSE where FlashInfer's
is base 2, xformers' top-left mask where bottom-right is meant, NaN leaking from keys no row sees)
is caught by the cases meant for it and by no other."""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import sys

import pytest

torch = pytest.importorskip("torch")

from flashparity.kernels.adapters import _PACKAGES  # noqa: E402
from flashparity.kernels.conformance import Case, conformance, suite_cases  # noqa: E402

STANDINS = os.path.join(os.path.dirname(__file__), "standins")
MODULES = ("_standin_core", "flash_attn", "flash_attn_interface", "flashinfer", "xformers")


@pytest.fixture
def standins(monkeypatch):
    """The stand-in packages importable, the GPU-only adapters allowed on the CPU; afterwards no
    stand-in module stays imported."""
    monkeypatch.syspath_prepend(STANDINS)
    for cls in _PACKAGES.values():
        monkeypatch.setattr(cls, "devices", ("cpu", "cuda"))
    yield __import__("_standin_core")
    for name in list(sys.modules):
        if name.split(".")[0] in MODULES:
            del sys.modules[name]


def _cases():
    """The quick suite's float16 cases, the default suite's varlen and paged ones (pages of 1, 5, 16
    and 256 slots, empty sequences) and the FP8 cases."""
    quick = suite_cases("quick", ["float16"])
    extra = [c for c in suite_cases("default", ["float16"]) if c.kind in ("varlen", "paged") and c not in quick]
    return quick + extra + suite_cases("quick", ["float8_e4m3fn"])


DISTS = {"flash-attn": ("flash-attn", "2.8.3+standin", "flash_attn/__init__.py"),
         "flash-attn-3": ("flash-attn-3", "3.0.0+standin", "flash_attn_interface.py"),
         "flashinfer": ("flashinfer-python", "0.7.2+standin", "flashinfer/__init__.py"),
         "xformers": ("xformers", "0.0.35+standin", "xformers/ops/__init__.py")}


@pytest.mark.parametrize("name", list(_PACKAGES))
def test_adapters_pass_stand_ins_that_follow_their_conventions(standins, name):
    caps = {"head_dims": None} if name == "flashinfer" else None  # (judge every head dim the stand-in takes)
    rep = conformance(name, suite=_cases(), capabilities=caps)
    assert rep.ok, str(rep)
    # every varlen and paged case, by name: "+" passes, "-" is unsupported (with the reasons below)
    names = ["seqs1x1_37x61_90x17_8x128-h4x2-d64-causal-varlen", "q1-k1_47_128_200-page16-h8x2-d128-paged",
             "seqs113x203_1x239_0x9_64x1_5x0-h4x1-d96-varlen", "seqs50x80_33x33-h4x4-d64-window7,3-varlen",
             "seqs40x70_70x40-h4x4-d64-causal-softcap30-alibi-varlen", "q7-k7_100_263-page1-h4x2-d64-causal-paged",
             "q7-k7_100_263_0-page5-h4x2-d64-causal-paged", "q7-k7_100_263-page16-h4x2-d64-causal-paged",
             "q7-k7_100_263-page256-h4x2-d64-causal-paged"]
    want = {"flash-attn": "+-+++---+",     # FA2: pages of a multiple of 256 slots
            "flash-attn-3": "++++-++++",   # FA3: no ALiBi
            "flashinfer": "-++--+-++",     # causal with more queries than keys (7 queries, 0 keys); no right window
            "xformers": "--+------"}[name]  # causal varlen needs keys >= queries; no varlen windows; no paged
    got = {r.case.name.removeprefix("float16-"): r.verdict for r in rep.cases if r.case.dtype == "float16"}
    assert "".join("+" if got[n] == "pass" else "-" if got[n] == "unsupported" else "?" for n in names) == want, (
        str(rep))
    reasons = {r.reason for r in rep.cases if r.verdict == "unsupported" and not r.case.fp8}
    expected_reasons = {
        "flash-attn": {"page size 1 not a multiple of 256", "page size 5 not a multiple of 256",
                       "page size 16 not a multiple of 256"},
        "flash-attn-3": {"ALiBi"},
        "flashinfer": {"causal with more queries than keys", "a right window bound without causal (window (7, 3))",
                       "ALiBi; causal with more queries than keys",
                       "a right window bound without causal (window (16, 0))"},
        "xformers": {"a causal varlen batch with more queries than keys in a sequence", "paged KV caches",
                     "sliding windows in a varlen batch (not judged through xformers' block-diagonal masks)",
                     "softcap", "softcap; a causal varlen batch with more queries than keys in a sequence; ALiBi in a "
                     "varlen batch (a tensor bias is one batch's)"}}[name]
    assert reasons >= expected_reasons, reasons
    # provenance: the package's version and the digest of the file it ran (no extension module here)
    dist, version, path = DISTS[name]
    # (a pure-Python package: the source file's digest, named so, never taken for an extension's)
    m = re.fullmatch(rf"pypi:{re.escape(dist)}@{re.escape(version)}\+source-sha256:([0-9a-f]{{64}})", rep.kernel_source)
    assert m, rep.kernel_source
    with open(os.path.join(STANDINS, path), "rb") as fh:
        assert m.group(1) == hashlib.sha256(fh.read()).hexdigest()


FAULTS = [  # (adapter, fault, the cases that must fail: by kind or name)
    ("flash-attn", "read-past-seqlen", {"paged"}),
    ("flash-attn", "cu-swap", {"varlen"}),
    ("flash-attn", "nan-leak", {"poisoned"}),
    ("flashinfer", "lse-natural", "every case: its LSE"),
    ("xformers", "top-left", {"float16-b1-q113-k203-h4x4-d64-causal", "float16-b1-q239-k17-h4x4-d32-causal-masked-rows"}),
    ("flash-attn-3", "fp8-no-descale", {"float8_e4m3fn"}),
]


@pytest.mark.parametrize("name,fault,expected", FAULTS, ids=[f"{a}-{b}" for a, b, _ in FAULTS])
def test_convention_faults_are_caught_by_their_cases(standins, name, fault, expected):
    standins.BROKEN.add(fault)
    try:
        rep = conformance(name, suite=_cases(), capabilities={"head_dims": None} if name == "flashinfer" else None)
    finally:
        standins.BROKEN.discard(fault)
    failed = [r for r in rep.cases if r.verdict in ("fail", "error")]
    assert not rep.ok and failed
    if isinstance(expected, str):  # the LSE base: every case that ran fails on its LSE and only on it
        ran = [r for r in rep.cases if r.verdict != "unsupported"]
        assert failed == ran and all(r.reason.startswith("lse: ") and ";" not in r.reason for r in failed), str(rep)
    else:
        got = {r.case.kind if r.case.kind in expected else r.case.dtype if r.case.dtype in expected else r.case.name
               for r in failed}
        assert got == expected, str(rep)
        # and every case of the kind or dtype meant for it fails, not one
        meant = [r for r in rep.cases if r.verdict != "unsupported" and (r.case.kind in expected or
                                                                        r.case.dtype in expected)]
        assert all(r.verdict == "fail" for r in meant), str(rep)


def test_conventions_of_a_users_callables(standins):
    """The stand-ins' functions as a user's own callables, one convention each."""
    fa, fi = __import__("flash_attn"), __import__("flashinfer")
    xops = __import__("xformers.ops", fromlist=["memory_efficient_attention"])
    cases = [c for c in _cases() if not c.fp8]
    fp8 = [c for c in _cases() if c.fp8]
    runs = {"fa2": (fa.flash_attn_func, None), "fa2-varlen": (fa.flash_attn_varlen_func, None),
            "fa2-kvcache": (fa.flash_attn_with_kvcache, None),  # (pages of a multiple of 256 slots, as FA2)
            "flashinfer": (fi.single_prefill_with_kv_cache, None),
            "xformers": (xops.memory_efficient_attention, None)}
    fa3 = __import__("flash_attn_interface")
    runs.update({"fa3": (fa3.flash_attn_func, None), "fa3-varlen": (fa3.flash_attn_varlen_func, None),
                 "fa3-kvcache": (fa3.flash_attn_with_kvcache, None)})
    for convention, (fn, caps) in runs.items():
        rep = conformance(fn, convention=convention, suite=cases + (fp8 if convention.startswith("fa3") else []),
                          capabilities=caps)
        assert rep.ok, (convention, str(rep))
        assert rep.kernel_source.startswith(f"python:{fn.__module__}.{fn.__qualname__}@sha256:")
        passed = {r.case.name.split("-")[1] for r in rep.cases if r.case.kind in ("varlen", "paged") and
                  r.verdict == "pass" and not r.case.fp8}  # (the sequences: seqs... for varlen, q... for paged)
        if convention.startswith("fa3"):  # FA3 takes FP8 with descales: each case its call takes passes
            took = {"fa3": ("plain", "masked-rows"), "fa3-varlen": ("plain", "masked-rows", "varlen"),
                    "fa3-kvcache": ("plain", "masked-rows", "paged")}[convention]
            assert {r.case.name: r.verdict for r in rep.cases if r.case.fp8} == {
                c.name: "pass" if c.kind in took else "unsupported" for c in fp8}, str(rep)
        want = {"fa2": set(),  # (flash_attn_func: dense batches only)
                "fa2-varlen": {"seqs1x1_37x61_90x17_8x128", "seqs113x203_1x239_0x9_64x1_5x0", "seqs50x80_33x33",
                               "seqs40x70_70x40"},
                "fa2-kvcache": {"q7"},  # (the page-256 case; q1's pages are 16 slots)
                "flashinfer": {"seqs113x203_1x239_0x9_64x1_5x0"},
                "xformers": {"seqs113x203_1x239_0x9_64x1_5x0"},
                "fa3": set(),
                "fa3-varlen": {"seqs1x1_37x61_90x17_8x128", "seqs113x203_1x239_0x9_64x1_5x0", "seqs50x80_33x33"},
                "fa3-kvcache": {"q7", "q1"}}[convention]  # (FA3: no ALiBi, any page size)
        assert passed == want, (convention, str(rep))
        if convention in ("fa2-varlen", "fa2-kvcache", "fa3-varlen", "fa3-kvcache"):  # dense cases too (a batch of equal sequences; the cache)
            assert rep.counts()["pass"] >= 11 + len(want), str(rep)  # (11: the dense quick cases but ALiBi)
    # fp16/bf16 only: a float32 case of an FA2 callable is unsupported, with its reason
    rep = conformance(fa.flash_attn_func, convention="fa2", suite=suite_cases("quick", ["float32"])[:1])
    assert rep.cases[0].verdict == "unsupported" and "dtype float32" in rep.cases[0].reason


def test_gpu_only_adapters_and_missing_packages(monkeypatch):
    with pytest.raises(ValueError, match=r"flash-attn runs on cuda only, not on cpu \(pass device='cuda'\)"):
        conformance("flash-attn")
    for cls in _PACKAGES.values():
        monkeypatch.setattr(cls, "devices", ("cpu", "cuda"))
    if any(__import__("importlib").util.find_spec(m) for m in ("flashinfer",)):
        pytest.skip("flashinfer is installed")
    with pytest.raises(ModuleNotFoundError) as err:
        conformance("flashinfer")
    assert "needs flashinfer, which is not installed: pip install flashinfer-python" in str(err.value)
    assert "\n" not in str(err.value)


def test_varlen_and_paged_cases():
    c = Case(dtype="float16", kind="varlen", causal=True, seqlens=((3, 1), (2, 5)))
    assert (c.batch, c.seqlen_q, c.seqlen_k, c.out_shape, c.lse_shape) == (2, 3, 5, (5, 4, 64), (4, 5))
    assert c.blind_rows().tolist() == [True, True, False, False, False]  # (3 queries, 1 key: rows 0 and 1 see none)
    x = c.inputs()
    assert x["cu_seqlens_q"].tolist() == [0, 3, 5] and x["cu_seqlens_k"].tolist() == [0, 1, 6]
    p = Case(kind="paged", page_size=4, seqlens=((2, 9), (2, 1)))
    x = p.inputs()
    table, cache = x["block_table"], x["k_cache"]
    assert cache.shape == (3 + 1 + 1, 4, 4, 64) and table.shape == (2, 3)
    spare = set(range(5)) - set(table[0].tolist()) - {int(table[1, 0])}
    assert len(spare) == 1 and table[1, 1] == table[1, 2] == spare.pop()  # unused entries name the unused page
    import numpy as np

    assert np.isnan(cache[table[0, 2], 1:]).any() and np.isfinite(cache[table[0, 2], 0]).all()
    dense = p.dense_inputs(x)
    assert dense[0]["k"].shape == (1, 9, 4, 64) and np.isfinite(dense[0]["k"]).all()
    for bad, msg in [(dict(kind="varlen"), "seqlens must be"), (dict(kind="varlen", seqlens=((1, -1),)), "seqlens must be"),
                     (dict(kind="varlen", seqlens=((1, 0), (0, 0))), "needs a query and a key somewhere"),
                     (dict(kind="paged", seqlens=((1, 2), (2, 2)), page_size=4), "share one seqlen_q"),
                     (dict(kind="paged", seqlens=((1, 2),)), "page_size must be"),
                     (dict(kind="varlen", seqlens=((1, 2),), page_size=4), "page_size is for paged"),
                     (dict(seqlens=((1, 2),)), "for varlen and paged cases")]:
        with pytest.raises(ValueError, match=msg):
            Case(**bad)
    assert inspect.signature(Case).parameters["page_size"].default == 0



# ---- Hugging Face hub kernels: a kernel laid out in a local hub cache, loaded offline -----------------

SHA = "0123456789abcdef0123456789abcdef01234567"
KERNEL_INIT = (
    '"""A hub kernel in FlashAttention-2\'s convention (the stand-in\'s functions)."""\n'
    "from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache  # noqa: F401\n")


def _kernel_folder(path, kernel_id="_flash_attn2_standin"):
    """A kernel build folder as kernel-builder lays one out: __init__.py and metadata.json (with the
    digest of its files); ``kernel_id`` names its module."""
    import base64
    import json

    path.mkdir(parents=True)
    (path / "__init__.py").write_text(KERNEL_INIT)
    digest = base64.b64encode(hashlib.sha256(KERNEL_INIT.encode()).digest()).decode()
    (path / "metadata.json").write_text(json.dumps({
        "name": "flash-attn2", "id": kernel_id, "version": 1, "license": "BSD-3-Clause",
        "python-depends": [], "backend": {"type": "cpu"},
        "digest": {"algorithm": "sha256", "files": {"__init__.py": digest}}}))
    return path


@pytest.fixture
def hub(standins, tmp_path, monkeypatch):
    """kernels-community/flash-attn2 at commit SHA (and its main branch) in a local hub cache, the hub
    offline: ``kernels.get_kernel`` finds it there, as it would after a download."""
    pytest.importorskip("kernels")
    import huggingface_hub.constants

    repo = tmp_path / "cache" / "kernels--kernels-community--flash-attn2"
    _kernel_folder(repo / "snapshots" / SHA / "build" / "torch-cpu")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LOCAL_KERNELS", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_hub_kernel_pinned_to_a_commit(hub, capsys):
    rep = conformance(f"hub:kernels-community/flash-attn2@{SHA}", suite=_cases())
    assert rep.ok and rep.counts()["pass"] >= 12, str(rep)
    assert rep.kernel_source == f"hf-kernels-community:flash-attn2@{SHA}"
    assert f"flashparity: hub:kernels-community/flash-attn2@{SHA} resolved to commit {SHA}" in capsys.readouterr().err


def test_hub_kernel_unpinned_revisions_and_bad_names(hub):
    with pytest.raises(ValueError, match="revision main is not a commit; pin one .* or pass --allow-unpinned"):
        conformance("hub:kernels-community/flash-attn2@main", suite=_cases()[:1])
    with pytest.raises(ValueError, match=r"revision \(none: the default branch\) is not a commit"):
        conformance("hub:kernels-community/flash-attn2", suite=_cases()[:1])
    rep = conformance("hub:kernels-community/flash-attn2@main", suite=_cases()[:1], allow_unpinned=True)
    assert rep.ok and rep.kernel_source == f"hf-kernels-community:flash-attn2@main (unpinned: resolved to {SHA})"
    for bad in ("hub:flash-attn2", "hub:a/b/c@x", "hub:kernels-community/flash-attn2@"):
        with pytest.raises(ValueError, match="a hub kernel is hub:<org>/<repo>"):
            conformance(bad)


def test_hub_kernel_from_a_local_folder(hub):
    folder = _kernel_folder(hub / "my-kernel", kernel_id=f"_my_kernel_{os.getpid()}_{id(hub)}")
    rep = conformance(f"hub:{folder}", suite=_cases()[:3])
    assert rep.ok, str(rep)
    # (a folder is no hub commit, never a pin: the digest of its files, names and bytes)
    m = re.fullmatch(rf"local:{re.escape(str(folder))}@sha256:([0-9a-f]{{64}})", rep.kernel_source)
    assert m, rep.kernel_source
    import shutil

    from flashparity.kernels.adapters import _tree_digest

    twin = hub / "twin"
    shutil.copytree(folder, twin, ignore=shutil.ignore_patterns("__pycache__"))
    assert _tree_digest(str(twin)) == m.group(1)
    (twin / "_ops.abi3.so").write_bytes(b"rebuilt")  # (the compiled code counts, not only __init__.py)
    assert _tree_digest(str(twin)) != m.group(1)
    # kernels imports a kernel once per id: a folder whose id was imported from elsewhere is refused
    conformance(f"hub:kernels-community/flash-attn2@{SHA}", suite=_cases()[:1])
    clash = _kernel_folder(hub / "same-id")
    with pytest.raises(ValueError, match="kernels handed back the kernel already imported from .*snapshots"):
        conformance(f"hub:{clash}", suite=_cases()[:1])


def test_apr_gate_on_a_hub_kernel(hub, capsys, tmp_path):
    """apr's whole gate: kernel parity --check, then run --attn --json, then classify provenance."""
    import json

    from flashparity.cli import main

    impl = f"hub:kernels-community/flash-attn2@{SHA}"
    code = main(["kernel", "parity", "--impl", impl, "--dtype", "float16", "--check", "--json"])
    body = json.loads(capsys.readouterr().out)
    assert code == 0 and body["check"]["ok"] and body["fa2_rule_ok"], body
    assert body["attn_impl"] == "flash2" and body["kernel_source"] == f"hf-kernels-community:flash-attn2@{SHA}"
    code = main(["run", "--attn", impl, "--dtype", "bfloat16", "--seqlen-q", "16", "--causal", "--json"])
    run = json.loads(capsys.readouterr().out)
    assert code == 0 and run["attn_impl"] == "flash2" and run["fallback"] is None, run
    (tmp_path / "run.json").write_text(json.dumps(run))
    code = main(["classify", "provenance", str(tmp_path / "run.json")])
    outcome = json.loads(capsys.readouterr().out)
    assert code == 0 and outcome == {"outcome": "OkFlash2", "ok": True, "sha": SHA}, outcome
    # unpinned: it runs, and the gate says the source is no pin
    code = main(["run", "--attn", "hub:kernels-community/flash-attn2@main", "--allow-unpinned", "--dtype", "float16"])
    (tmp_path / "run.json").write_text(capsys.readouterr().out)
    assert code == 0
    code = main(["classify", "provenance", str(tmp_path / "run.json")])
    assert code == 1 and json.loads(capsys.readouterr().out)["outcome"] == "KernelSourceMalformed"


def test_flashinfer_paged_batch_with_an_empty_sequence(standins):
    """A request with no key has no page and a last page of 0 slots (FlashInfer's kv length is
    max(pages - 1, 0) * page_size + last_page_len): its rows see nothing."""
    case = Case(dtype="bfloat16", kind="paged", page_size=5, seqlens=((3, 0), (3, 12), (3, 5)))
    rep = conformance("flashinfer", suite=[case])
    assert rep.ok and rep.cases[0].verdict == "pass", str(rep)


def test_hub_kernel_redirected_by_local_kernels_is_refused(hub, monkeypatch):
    folder = _kernel_folder(hub / "override", kernel_id=f"_override_{os.getpid()}_{id(hub)}")
    monkeypatch.setenv("LOCAL_KERNELS", f"kernels-community/flash-attn2={folder}")
    with pytest.raises(ValueError, match="with no hub commit .*LOCAL_KERNELS override"):
        conformance(f"hub:kernels-community/flash-attn2@{SHA}", suite=_cases()[:1])


def test_package_provenance_hashes_the_packages_own_extensions():
    """pypi:<dist>@<version>+sha256...: the digest of the compiled extensions the distribution's RECORD
    lists (all of them where it lists several): the same whichever of them were loaded; never another
    package's (torch's are loaded too)."""
    import importlib
    import importlib.metadata

    import numpy

    from flashparity.kernels.adapters import _package_source

    src = _package_source("numpy", numpy)
    m = re.fullmatch(r"pypi:numpy@(.+)\+sha256-of-(\d+)-extensions:([0-9a-f]{64})", src)
    assert m and m.group(1) == importlib.metadata.version("numpy"), src
    exts = sorted(str(f) for f in importlib.metadata.files("numpy") if str(f).endswith(".so"))
    assert int(m.group(2)) == len(exts) > 1
    importlib.import_module("numpy._core._multiarray_tests")  # (one more of them loaded: the same digest)
    assert _package_source("numpy", numpy) == src


def test_a_folders_digest_covers_linked_folders_and_unreadable_entries(tmp_path):
    from flashparity.kernels.adapters import _tree_digest

    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "__init__.py").write_text("x = 1\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "_ops.so").write_bytes(b"v1")
    (tmp_path / "k" / "lib").symlink_to(tmp_path / "lib", target_is_directory=True)
    first = _tree_digest(str(tmp_path / "k"))
    (tmp_path / "lib" / "_ops.so").write_bytes(b"v2")  # (behind a symlinked folder: still the kernel's code)
    second = _tree_digest(str(tmp_path / "k"))
    assert first != second
    (tmp_path / "k" / "gone.so").symlink_to(tmp_path / "nowhere")  # (dangling: counted, not an error)
    assert _tree_digest(str(tmp_path / "k")) not in (first, second)
    (tmp_path / "k" / "loop").symlink_to(tmp_path / "k", target_is_directory=True)  # (a loop ends)
    _tree_digest(str(tmp_path / "k"))
