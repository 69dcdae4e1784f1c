"""Optional packages, imported when a feature first needs them: a missing one is a
``ModuleNotFoundError`` whose message is one line naming the ``pip install`` that fixes it."""

from __future__ import annotations

import importlib
from types import ModuleType

#: The command that installs each package a flashparity path imports lazily, by top-level module.
INSTALL = {
    "torch": "pip install torch",
    "jax": "pip install 'flashparity[jax]'",
    "distributed": "pip install 'flashparity[dask]'",
    "dask": "pip install 'flashparity[dask]'",
    "cuda": "pip install 'flashparity[cuda]'",
    "ml_dtypes": "pip install ml_dtypes",
    "tqdm": "pip install tqdm",
    "numpy": "pip install numpy",
    "flash_attn": "pip install flash-attn",
    "flash_attn_interface": "build flash-attention's hopper/ (FlashAttention-3: python setup.py install there)",
    "flashinfer": "pip install flashinfer-python",
    "xformers": "pip install xformers",
    "kernels": "pip install 'flashparity[hub]'",
    "transformers": "pip install transformers",
}


def install_hint(name: str) -> str:
    """The pip command that installs top-level module `name`."""
    return INSTALL.get(name, f"pip install {name}")


def require(module: str, feature: str) -> ModuleType:
    """``import module`` for `feature` (e.g. "fp.compare_modules"); when its package is not
    installed, ModuleNotFoundError: "fp.compare_modules needs torch, which is not installed: pip
    install torch". (An import error inside an installed package propagates as it is.)"""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != top:
            raise
        raise ModuleNotFoundError(f"{feature} needs {top}, which is not installed: {install_hint(top)}",
                                  name=top) from None


def missing_package(exc: ImportError) -> str:
    """One line for an ImportError: the package that is missing and the pip install that fixes it."""
    name = (exc.name or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    if not name:
        return f"{exc} (a missing or mismatched package)"
    if name == "flashparity":
        return f"{exc}: this flashparity installation is incomplete; reinstall it (pip install .)"
    if "not installed" in str(exc):  # (require's message already names the fix)
        return str(exc)
    return f"this needs the {name!r} package, which is not installed: {install_hint(name)}"
