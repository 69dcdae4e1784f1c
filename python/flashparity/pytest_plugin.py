"""pytest plugin: ``pytest --fp-kernel KERNEL [--fp-convention C] [--fp-suite quick|default|full]
[--fp-dtype D ...] [--fp-capabilities JSON] [--fp-device cpu|cuda] [--fp-backward]`` adds one test item per
conformance case of KERNEL (a built-in adapter's name or ``package.module:function``) to the session,
under a collector named ``flashparity-conformance`` (ids ``flashparity-conformance::<case name>``): a
failing case fails with its verdict, an unsupported one is skipped with its reason. ``--fp-backward``
judges each case's gradients too (``conformance(..., backward=True)``): a failed or raising backward
fails the item, an unsupported one skips it with the reason. Without ``--fp-kernel`` the
plugin adds nothing; the conformance modules (and torch, JAX) load only when it is given. (pytest
loads the entry point by itself: do not also pass ``-p flashparity.pytest_plugin`` unless plugin
autoloading is off.)
"""

from __future__ import annotations

import json

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("flashparity", "attention-kernel conformance (flashparity)")
    group.addoption("--fp-kernel", metavar="KERNEL",
                    help="run flashparity's conformance suite on KERNEL: a built-in adapter (flashparity kernels "
                    "lists them) or package.module:function (with --fp-convention)")
    group.addoption("--fp-convention", metavar="C",
                    help="calling convention of the kernel: bshd, bshd-numpy, fa2, fa2-varlen, fa2-kvcache, fa3, "
                    "fa3-varlen, fa3-kvcache, sdpa, flashinfer, xformers, jax")
    group.addoption("--fp-suite", default="quick", choices=("quick", "default", "full"),
                    help="which conformance suite (default quick)")
    group.addoption("--fp-dtype", action="append", metavar="DTYPE",
                    help="run only this dtype's cases (float32, float16, bfloat16, or the FP8 cases of "
                    "float8_e4m3fn, float8_e5m2; repeatable)")
    group.addoption("--fp-capabilities", metavar="JSON",
                    help='what the kernel supports, e.g. \'{"window": true, "lse": true}\'')
    group.addoption("--fp-device", default="cpu", choices=("cpu", "cuda"),
                    help="where the kernel runs (default cpu; cuda: its inputs as torch tensors on the GPU)")
    group.addoption("--fp-backward", action="store_true",
                    help="judge each case's gradients (dq, dk, dv) too, as conformance(..., backward=True)")


class ConformanceCollector(pytest.Collector):
    """The parent of the conformance items (their ids read ``flashparity-conformance::<case>``)."""

    def collect(self):  # (its items are made by pytest_collection_modifyitems)
        return []


class ConformanceItem(pytest.Item):
    """One conformance case of the kernel under test."""

    def __init__(self, *, case, adapter, backward=False, **kw):
        super().__init__(**kw)
        self.case = case
        self.adapter = adapter
        self.backward = backward
        self.result = None

    def runtest(self):
        from .kernels.conformance import run_case

        self.result = run_case(self.adapter, self.case, self.backward)
        what, text = self.result.outcome()
        if what == "fail":
            raise ConformanceFailure(text)
        if what == "skip":
            pytest.skip(text)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return "flashparity-conformance", None, f"{self.adapter.name}: {self.case.name}"


class ConformanceFailure(AssertionError):
    """A case the kernel fails (its verdict is the message)."""


def _adapter(config):
    from .kernels.conformance import prepare_adapter

    caps = config.getoption("--fp-capabilities")
    try:
        capabilities = json.loads(caps) if caps else None
        adapter = prepare_adapter(config.getoption("--fp-kernel"), convention=config.getoption("--fp-convention"),
                                  capabilities=capabilities, device=config.getoption("--fp-device"))
    except (ValueError, TypeError, ImportError) as exc:
        raise pytest.UsageError(f"--fp-kernel: {exc}") from None
    return adapter


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    if not config.getoption("--fp-kernel"):
        return
    from .kernels.conformance import DTYPES, suite_cases

    adapter = _adapter(config)
    try:
        cases = suite_cases(config.getoption("--fp-suite"), config.getoption("--fp-dtype") or DTYPES)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    parent = ConformanceCollector.from_parent(session, name="flashparity-conformance", nodeid="flashparity-conformance")
    backward = bool(config.getoption("--fp-backward"))
    items.extend(ConformanceItem.from_parent(parent, name=case.name, case=case, adapter=adapter, backward=backward)
                 for case in cases)
