"""Attention kernels: flashparity's own and anyone's, and how they are judged.

Layer: imports ``flashparity._core``, the base modules (:mod:`flashparity._tensor` views,
:mod:`flashparity.parity`, :mod:`flashparity._build`, :mod:`flashparity._write`,
:mod:`flashparity._optional`) and nothing above them: not :mod:`flashparity.io`,
:mod:`flashparity.compare`, :mod:`flashparity.models` or the CLI.

* :mod:`.attention`: the Python face of the naive and flash2 kernels (``fp.attention``,
  ``fp.merge_attention_states``): views checked, the CPU or CUDA kernel called on them.
* :mod:`.serving`: the serving layouts (``fp.attention_varlen`` and its backward
  ``fp.attention_varlen_backward``, ``fp.attention_kvcache``).
* :mod:`.adapters`: third-party kernels (FlashAttention, FlashInfer, xformers, SDPA/Flex, JAX, hub
  kernels, a user's callable) behind one calling convention, each saying what it cannot run.
* :mod:`.conformance` (+ :mod:`.conformance_html`): any kernel's suite against the float64 oracle.
* :mod:`.kernel_parity`: ``fp.kernel_parity``, apr's kernel parity body (a kernel against a reference
  under FlashAttention-2's rule).
* :mod:`.backward`: gradient verdicts (``backward=True`` of both): dq, dk, dv against float64 gold
  gradients under FlashAttention-2's rule.

The submodules share their names with the functions ``import flashparity as fp`` gives
(``fp.attention``, ``fp.conformance``, ``fp.kernel_parity``), so this package re-exports nothing:
use ``fp.<function>``, or import a submodule (``from flashparity.kernels.conformance import Case``).
"""
