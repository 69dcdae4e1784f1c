"""Conformance cases for a kernel's own test suite, and the pytest plugin's items.

    from flashparity.testing import conformance_cases

    @pytest.mark.parametrize("case", conformance_cases("quick"), ids=str)
    def test_my_attention(case):
        case.check(my_attention, convention="bshd")

``case.check`` raises ``AssertionError`` with the verdict (reason, statistics, each rule's ratio)
when the kernel fails the case, and skips an unsupported case with its reason. The pytest plugin
(:mod:`flashparity.pytest_plugin`, registered as a ``pytest11`` entry point) runs the same cases
without a test file: ``pytest --fp-kernel mypkg.attn:forward --fp-convention fa2``.
"""

from __future__ import annotations

from typing import Iterable

from .kernels.conformance import DTYPES, Case, suite_cases

__all__ = ["conformance_cases", "Case"]


def conformance_cases(suite: str = "quick", dtypes: Iterable[str] = DTYPES, seed: int = 0) -> list[Case]:
    """The cases of a conformance suite (``quick``, ``default`` or ``full``; see
    :func:`flashparity.kernels.conformance.suite_cases`), each with ``check(kernel, convention=...)`` and
    its name as ``str(case)`` (a test id)."""
    return suite_cases(suite, dtypes, seed)
