"""Model-level comparison: two runs of a model (or a run and its dump) compared module by module.

Layer: imports :mod:`flashparity.parity`, :mod:`flashparity.io` and :mod:`flashparity.compare`
(a dump is a directory of tensor files) and the base modules; nothing of :mod:`flashparity.kernels`
or the CLI. :mod:`.modules` holds ``fp.compare_modules`` and ``fp.dump`` (forward hooks on every
submodule, the first divergence in execution order); :mod:`.report` renders its self-contained
HTML page.
"""

from __future__ import annotations

from .modules import ModuleReport, compare_modules, dump

__all__ = ["ModuleReport", "compare_modules", "dump"]
