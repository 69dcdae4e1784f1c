"""flashparity: does the fast attention kernel compute the same function as its reference?

Public API (see the README and SPEC): :func:`build_info`, and the classifiers in
:mod:`flashparity.classify`. The compiled core is the private module ``flashparity._core``.
"""

from __future__ import annotations

from . import classify
from ._build import build_info
from ._core import __version__

__all__ = ["__version__", "build_info", "classify"]
