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

from flashparity.adapters import _PACKAGES  # noqa: E402
from flashparity.conformance import Case, conformance, suite_cases  # noqa: E402

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
    """The quick suite's float16 cases, the default suite's page-256 paged case and the FP8 cases."""
    extra = [c for c in suite_cases("default", ["float16"]) if c.kind == "paged" and c.page_size == 256]
    return suite_cases("quick", ["float16"]) + extra + suite_cases("quick", ["float8_e4m3fn"])


DISTS = {"flash-attn": ("flash-attn", "2.8.3+standin", "flash_attn/__init__.py"),
         "flash-attn-3": ("flash-attn-3", "3.0.0+standin", "flash_attn_interface.py"),
         "flashinfer": ("flashinfer-python", "0.7.2+standin", "flashinfer/__init__.py"),
         "xformers": ("xformers", "0.0.35+standin", "xformers/ops/__init__.py")}


@pytest.mark.parametrize("name", list(_PACKAGES))
def test_adapters_pass_stand_ins_that_follow_their_conventions(standins, name):
    caps = {"head_dims": None} if name == "flashinfer" else None  # (judge every head dim the stand-in takes)
    rep = conformance(name, suite=_cases(), capabilities=caps)
    assert rep.ok, str(rep)
    by_kind = {}
    for r in rep.cases:
        if not r.case.fp8:
            by_kind.setdefault(r.case.kind, set()).add(r.verdict)
    fp8 = {r.verdict for r in rep.cases if r.case.fp8}
    assert fp8 == ({"pass"} if name == "flash-attn-3" else {"unsupported"}), str(rep)  # (FA3 alone takes FP8)
    want = {"flash-attn": {"varlen": {"pass"}, "paged": {"pass", "unsupported"}},
            "flash-attn-3": {"varlen": {"pass"}, "paged": {"pass"}},
            "flashinfer": {"varlen": {"pass"}, "paged": {"pass"}},
            "xformers": {"varlen": {"pass"}, "paged": {"unsupported"}}}[name]
    for kind, verdicts in want.items():
        assert by_kind[kind] == verdicts, (kind, str(rep))
    reasons = {r.reason for r in rep.cases if r.verdict == "unsupported" and not r.case.fp8}
    if name == "flash-attn":  # FA2's paged caches take pages of a multiple of 256 slots
        assert reasons == {"page size 16 not a multiple of 256"}, reasons
    # provenance: the package's version and the digest of the file it ran (no extension module here)
    dist, version, path = DISTS[name]
    m = re.fullmatch(rf"pypi:{re.escape(dist)}@{re.escape(version)}\+sha256:([0-9a-f]{{64}})", rep.kernel_source)
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


def test_conventions_of_a_users_callables(standins):
    """The stand-ins' functions as a user's own callables, one convention each."""
    fa, fi = __import__("flash_attn"), __import__("flashinfer")
    xops = __import__("xformers.ops", fromlist=["memory_efficient_attention"])
    cases = [c for c in _cases() if not c.fp8]
    runs = {"fa2": (fa.flash_attn_func, None), "fa2-varlen": (fa.flash_attn_varlen_func, None),
            "fa2-kvcache": (fa.flash_attn_with_kvcache, None),  # (pages of a multiple of 256 slots, as FA2)
            "flashinfer": (fi.single_prefill_with_kv_cache, None),
            "xformers": (xops.memory_efficient_attention, None)}
    for convention, (fn, caps) in runs.items():
        rep = conformance(fn, convention=convention, suite=cases, capabilities=caps)
        assert rep.ok, (convention, str(rep))
        assert rep.kernel_source.startswith(f"python:{fn.__module__}.{fn.__qualname__}@sha256:")
        verdicts = {r.case.kind: r.verdict for r in rep.cases if r.case.kind in ("varlen", "paged")}
        if convention in ("fa2-varlen", "flashinfer", "xformers"):
            assert verdicts["varlen"] == "pass", (convention, str(rep))
        if convention == "fa2-kvcache":
            assert verdicts["paged"] == "pass" and rep.counts()["pass"] >= 12, str(rep)
        if convention == "fa2-varlen":  # dense cases go in as a batch of equal sequences
            assert rep.counts()["pass"] >= 13, str(rep)
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
    digest = hashlib.sha256(KERNEL_INIT.encode()).hexdigest()
    assert rep.kernel_source == f"local:{folder}@sha256:{digest}"  # (a folder is no hub commit: never a pin)
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
