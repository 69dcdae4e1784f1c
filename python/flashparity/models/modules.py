"""Where two models diverge: every submodule's outputs of two (or three) PyTorch runs, compared as
they are produced (``fp.compare_modules``), and dumps of one run for a comparison elsewhere
(``fp.dump``).

compare_modules runs the models side by side, one thread each, in lockstep: a forward hook on
every submodule hands the module's output to a rendezvous, and the thread that brings the last copy
of an output reduces the pair (``fp.parity``, on the tensors' device, zero copy) while the others
wait, holding their output by reference (it cannot change while its thread waits). So at most one
output per model is held, the model's own. Only when the models' structures differ (a module one
model has and the other has not) would both threads wait forever; then one goes on, keeping a copy
of its unmatched output until its twin comes or its run ends. torch is imported only here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import threading
from collections.abc import Mapping
from typing import Any, Callable, Iterable

from .._optional import require
from ..parity import ParityStats, parity, within_gates

__all__ = ["compare_modules", "ModuleReport", "ModuleEntry", "default_tolerances", "dump", "DUMP_MANIFEST"]

# torch.testing.assert_close's default (rtol, atol) per dtype
_ASSERT_CLOSE = {"float16": (1e-3, 1e-5), "bfloat16": (1.6e-2, 1e-5), "float32": (1.3e-6, 1e-5),
                 "float64": (1e-7, 1e-7)}
_COMPARED = tuple(_ASSERT_CLOSE)
# FlashAttention-2's rule against a gold run: err(b) <= 2 * err(a) + REFERENCE_EPS (max-abs)
REFERENCE_EPS = 1e-5
DUMP_MANIFEST = "flashparity-dump.json"


def default_tolerances(dtype_a: str, dtype_b: str) -> tuple[float, float]:
    """(atol, rtol): torch.testing.assert_close's defaults for the pair, the looser of the two dtypes'."""
    ra, aa = _ASSERT_CLOSE[dtype_a]
    rb, ab = _ASSERT_CLOSE[dtype_b]
    return max(aa, ab), max(ra, rb)


def _dtype_name(t: Any) -> str:
    return str(t.dtype).replace("torch.", "")


def leaves(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    """The tensors in a module's output, with their paths: '' for a tensor, '[0]' for a tuple item,
    '.logits' for a mapping's or dataclass's field (Hugging Face ModelOutput is both)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    out: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out += leaves(v, f"{path}.{k}")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            out += leaves(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += leaves(v, f"{path}[{i}]")
    return out


# ---- the report ----------------------------------------------------------------------------------


@dataclasses.dataclass
class ModuleEntry:
    """One tensor of one module call: ``name`` (qualified module name, after ``name_map``), ``call``
    (0 for the first call of that module), ``path`` (the tensor's place in the output), ``stats``
    (model_a's tensor against model_b's), ``ok`` and ``rule`` (what judged it), ``error`` (why it
    could not be compared: shapes, dtypes, a side missing), with a reference model ``ref``:
    ``{"err_a", "err_b", "ratio"}`` (max-abs errors against the gold run), and ``phase``: "forward"
    (a module output, or the loss ``<loss>#0``), "backward" (the gradient a module sends back into
    one of its inputs: path ``.grad_input[i]`` or ``.grad_input.<keyword>``) or "parameter" (a
    parameter's ``.grad``: name the parameter's, path ``.grad``)."""

    name: str
    call: int
    path: str
    order: int
    stats: ParityStats | None
    ok: bool
    rule: str
    error: str | None = None
    ref: dict | None = None
    phase: str = "forward"

    @property
    def key(self) -> str:
        return f"{self.name or '<model>'}#{self.call}{self.path}"

    @property
    def badness(self) -> float:
        """How far from passing (for sorting, worst first): the rule's ratio or max_abs over atol."""
        if self.stats is None:  # (not compared: an error if it failed, else nothing to rank)
            return math.inf if not self.ok else -math.inf
        if self.ref is not None:
            return _nan_inf(self.ref["ratio"])
        s = self.stats
        return _nan_inf(s.max_abs_diff / (s.atol + s.rtol) if s.atol + s.rtol > 0 else s.max_abs_diff)

    def to_dict(self) -> dict:
        d = {"name": self.name, "call": self.call, "path": self.path, "key": self.key, "ok": self.ok,
             "rule": self.rule}
        if self.error is not None:
            d["error"] = self.error
        if self.stats is not None:
            d["stats"] = self.stats.to_dict()
        if self.ref is not None:
            d["ref"] = dict(self.ref)
        if self.phase != "forward":
            d["phase"] = self.phase
        return d


def _nan_inf(x: float) -> float:
    return math.inf if x != x else x


class ModuleReport:
    """What ``compare_modules`` (or a dump comparison) found: ``entries`` in execution order (the order
    in which model_a's forward calls finished), ``ok``, ``first_divergence`` (the first failing entry,
    or None), the module outputs found in one run only, and where it ran."""

    def __init__(self, entries: list[ModuleEntry], only: dict[str, list[str]], meta: dict):
        self.entries = sorted(entries, key=lambda e: e.order)
        self.only = only
        self.meta = meta

    @property
    def ok(self) -> bool:
        # (an output only the reference run has is listed, not a divergence of a from b)
        return all(e.ok for e in self.entries) and not any(v for k, v in self.only.items() if k != "reference")

    @property
    def first_divergence(self) -> ModuleEntry | None:
        """The first failing entry: forward outputs in execution order, then (``backward=True``) module
        gradients in backward execution order, then parameter gradients."""
        return next((e for e in self.entries if not e.ok), None)

    @property
    def first_backward_divergence(self) -> ModuleEntry | None:
        """The first failing module gradient in backward execution order (then parameter gradients),
        whatever the forward did; None without ``backward=True`` or when every gradient passes."""
        return next((e for e in self.entries if not e.ok and e.phase != "forward"), None)

    def to_dict(self) -> dict:
        fd = self.first_divergence
        backward = any(e.phase != "forward" for e in self.entries)
        fbd = self.first_backward_divergence
        return {
            "ok": self.ok,
            "first_divergence": None if fd is None else fd.key,
            **({"first_backward_divergence": None if fbd is None else fbd.key} if backward else {}),
            "entries": [e.to_dict() for e in self.entries],
            **{f"only_in_{side}": list(keys) for side, keys in self.only.items()},
            "meta": dict(self.meta),
        }

    def to_html(self, path: str | os.PathLike) -> None:
        """Write the self-contained HTML report (inline SVG, no network) to ``path``."""
        from .report import render_html

        from .._write import write_atomically

        data = render_html(self).encode("utf-8")
        write_atomically(os.fspath(path), lambda fh: fh.write(data))

    def __str__(self) -> str:
        from .._write import printable  # (keys come from module names, or a dump's manifest: untrusted)

        fd = self.first_divergence
        fbd = self.first_backward_divergence
        head = (f"compare_modules: {'OK' if self.ok else 'DIVERGED'}, {len(self.entries)} module outputs"
                + (f"; first divergence: {printable(fd.key)} ({fd.rule})" if fd is not None else "")
                + (f"; first backward divergence: {printable(fbd.key)}" if fbd is not None and fbd is not fd else ""))
        lines = [head, f"{'module output':<48} {'ok':<3} {'max_abs_diff':>12} {'cosine_sim':>14} {'mismatch':>9} "
                       f"{'ref ratio':>9}  rule"]
        for e in sorted(self.entries, key=lambda e: (e.ok, -e.badness, e.order)):
            key = printable(e.key)[:48]
            if e.stats is None:
                lines.append(f"{key:<48} {'ok' if e.ok else 'NO':<3} {printable(e.error or e.rule)}")
                continue
            s = e.stats
            ratio = f"{e.ref['ratio']:9.3g}" if e.ref is not None else f"{'':9}"
            lines.append(f"{key:<48} {'ok' if e.ok else 'NO':<3} {s.max_abs_diff:12.4g} {s.cosine_sim:14.10f} "
                         f"{s.mismatch_fraction:9.3%} {ratio}  {e.rule}")
        for side, keys in self.only.items():
            if keys:
                lines.append(f"only in {side}: {', '.join(map(printable, keys[:20]))}" + (" ..." if len(keys) > 20 else ""))
        return "\n".join(lines)

    __repr__ = __str__


# ---- judging -------------------------------------------------------------------------------------


class _Judge:
    def __init__(self, atol, rtol, min_cosine, max_mismatch_ratio, with_reference: bool):
        self.atol, self.rtol, self.min_cosine = atol, rtol, min_cosine
        self.max_mismatch_ratio = max_mismatch_ratio
        self.with_reference = with_reference

    def exact(self, name: str, call: int, path: str, order: float, numel: int, unequal: int) -> ModuleEntry:
        """An integer (bool, complex) output: element for element, under the same mismatch ratio."""
        ok = within_gates(numel, unequal, None, self.max_mismatch_ratio, None)
        return ModuleEntry(name, call, path, order, None, ok, "exact (not a float)",
                           None if ok else f"{unequal} of {numel} elements differ")

    def tolerances(self, da: str, db: str) -> tuple[float, float]:
        if self.atol is not None and self.rtol is not None:
            return self.atol, self.rtol
        atol, rtol = default_tolerances(da, db)
        return (self.atol if self.atol is not None else atol), (self.rtol if self.rtol is not None else rtol)

    def entry(self, name: str, call: int, path: str, order: float, a: Any, b: Any, gold: Any = None,
              stats: ParityStats | None = None, gold_stats: tuple | None = None,
              use_reference: bool | None = None) -> ModuleEntry:
        """Judge one tensor pair (tensors, or stats already taken: a dump comparison)."""
        with_reference = self.with_reference if use_reference is None else use_reference
        if stats is None:
            da, db = _dtype_name(a), _dtype_name(b)
            if tuple(a.shape) != tuple(b.shape):
                return ModuleEntry(name, call, path, order, None, False, "shapes",
                                   f"shape-mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
            explicit = self.atol is not None and self.rtol is not None
            if (da not in _COMPARED or db not in _COMPARED) and not (
                    explicit and a.is_floating_point() and b.is_floating_point()):  # (FP8: by parity, if told how)
                if a.is_floating_point() and b.is_floating_point():
                    return ModuleEntry(name, call, path, order, None, True, "not compared",
                                       f"no default tolerances for {da} vs {db}: give atol and rtol")
                if da != db:
                    return ModuleEntry(name, call, path, order, None, False, "dtypes",
                                       f"unsupported-dtype: {da} vs {db} (a tensor that is not a float is "
                                       "compared only with its own dtype)")
                return self.exact(name, call, path, order, a.numel(), _unequal(a.detach(), b.detach()))
            if a.numel() == 0:
                return ModuleEntry(name, call, path, order, None, True, "empty")
            atol, rtol = self.tolerances(da, db)
            stats = parity(a.detach(), b.detach(), atol=atol, rtol=rtol)
        if with_reference:
            if gold_stats is None:
                if tuple(gold.shape) != tuple(a.shape):
                    return ModuleEntry(name, call, path, order, stats, False, "shapes",
                                       f"shape-mismatch against the reference: {tuple(gold.shape)}")
                err_a, err_b = _gold_error(a, gold), _gold_error(b, gold)
            else:
                err_a, err_b = gold_stats[0].max_abs_diff, gold_stats[1].max_abs_diff
            bound = 2.0 * err_a + REFERENCE_EPS
            ok = bool(err_b <= bound)  # (False when either error is NaN)
            ratio = err_b / bound  # (NaN when either is: consistent with ok)
            rule = f"max|b-gold| <= 2*max|a-gold| + {REFERENCE_EPS:g}"
            return ModuleEntry(name, call, path, order, stats, ok, rule,
                               ref={"err_a": err_a, "err_b": err_b, "ratio": ratio})
        ok = within_gates(stats.numel, stats.mismatches, stats.cosine_sim, self.max_mismatch_ratio, self.min_cosine)
        rule = f"isclose(atol={stats.atol:g}, rtol={stats.rtol:g})"
        if self.max_mismatch_ratio:
            rule += f", mismatches <= {self.max_mismatch_ratio:g}"
        if self.min_cosine is not None:
            rule += f", cosine >= {self.min_cosine:g}"
        return ModuleEntry(name, call, path, order, stats, ok, rule)


def _unequal(a: Any, b: Any) -> int:
    """Elements of two tensors of one bool, integer or complex dtype that differ: integers and bools
    by their bytes (as a file comparison counts them), complex numbers by value (a NaN never equal)."""
    if a.numel() == 0:
        return 0
    b = b.to(a.device)
    if a.is_complex():
        return int((a != b).sum())
    import torch

    ua = a.contiguous().reshape(-1).view(torch.uint8).reshape(a.numel(), -1)
    ub = b.contiguous().reshape(-1).view(torch.uint8).reshape(b.numel(), -1)
    return int((ua != ub).any(dim=1).sum())


def _gold_error(x: Any, gold: Any) -> float:
    """max |x - gold| where equal values (the same infinity included) count 0: NaN only where x and
    the gold run truly differ by NaN (a NaN in one of them and not the other, opposite infinities)."""
    err = parity(x.detach(), gold.detach()).max_abs_diff
    if err == err:
        return err
    import torch

    xd, gd = x.detach(), gold.detach()
    if xd.dtype != gd.dtype:  # (rare: a NaN or an infinity on the way; one temporary of the tensor's size)
        xd = xd.to(torch.promote_types(xd.dtype, gd.dtype))
        gd = gd.to(xd.dtype)
    same = (xd == gd) | (torch.isnan(xd) & torch.isnan(gd))
    diff = torch.where(same, torch.zeros((), dtype=xd.dtype, device=xd.device), (xd - gd).abs())
    return float(diff.max().double()) if diff.numel() else 0.0


# ---- gradients ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _identity() -> Any:
    import torch

    class InputGrad(torch.autograd.Function):
        """x itself (a view, as any custom function's output that is its input): a node of its own,
        so a hook on its output sees the gradient of this one use of x."""

        @staticmethod
        def forward(ctx, x):  # noqa: ANN001 - torch's signature
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):  # noqa: ANN001
            return g

    return InputGrad


def _hook_input_grads(model: Any, canon: Callable[[str], str | None],
                      on_grad: Callable[[str, int, str, Any], None],
                      active: Callable[[], bool] | None = None) -> list:
    """A forward pre-hook on every submodule `canon` names that routes each tensor input needing a
    gradient (positional or keyword, not inside a container) through an identity node, so that the
    gradient the module sends back into that input, and only that use of it, reaches
    ``on_grad(name, call, path, grad)`` when the backward computes it (paths ``.grad_input[i]`` and
    ``.grad_input.<keyword>``; `call` is the forward call's index). This is what
    ``register_full_backward_hook`` gives, for keyword inputs too (Hugging Face passes
    ``hidden_states=`` by keyword). A module that changes such an input in place fails as it would
    under a full backward hook."""
    import torch

    identity = _identity()
    calls: dict[str, int] = {}
    handles = []
    for qname, module in model.named_modules():
        name = canon(qname)
        if name is None:
            continue

        def pre(_module, args, kwargs, name=name):
            if (active is not None and not active()) or not torch.is_grad_enabled():
                return None
            call = calls.get(name, 0)
            calls[name] = call + 1

            def wrap(path: str, x: Any) -> Any:
                if not (isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()):
                    return x
                y = identity.apply(x)
                y.register_hook(lambda g: on_grad(name, call, path, g))
                return y

            return (tuple(wrap(f".grad_input[{i}]", a) for i, a in enumerate(args)),
                    {k: wrap(f".grad_input.{k}", v) for k, v in kwargs.items()})

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
    return handles


def _loss_of(output: Any, loss_fn: Callable | None) -> Any:
    """loss_fn(output), or the output's own ``loss`` (a Hugging Face model given labels): a scalar
    tensor with a graph."""
    import torch

    if loss_fn is not None:
        loss = loss_fn(output)
    else:
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if loss is None:
            raise ValueError(f"backward=True needs loss_fn= (a function of the model's output returning a scalar "
                             f"tensor): the output, a {type(output).__name__}, has no loss")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        raise ValueError(f"the loss must be a floating-point tensor of one element, got "
                         f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    if not loss.requires_grad:
        raise ValueError("the loss does not require a gradient: no parameter or input of the model requires "
                         "one (or the forward ran without autograd)")
    return loss


def _check_backward_args(torch: Any, backward: Any, loss_fn: Any, what: str) -> None:
    if not isinstance(backward, bool):
        raise TypeError(f"backward must be True or False, got {backward!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if loss_fn is not None and not backward:
        raise ValueError("loss_fn is used only with backward=True (the forward alone has no loss)")
    if backward and torch.is_inference_mode_enabled():
        raise RuntimeError(f"backward=True cannot run under torch.inference_mode(): leave it for {what}")


def _in_place_hint(exc: BaseException) -> BaseException:
    """torch's error for an in-place change of a module input that the gradient hooks routed through
    their identity node, with what to do about it; any other error as it is."""
    if isinstance(exc, RuntimeError) and "InputGrad" in str(exc) and "inplace" in str(exc).replace("-", ""):
        hint = RuntimeError("backward=True: a module changes one of its inputs in place (e.g. nn.ReLU(inplace=True)), "
                            "which the per-module gradient hooks cannot follow, as register_full_backward_hook "
                            "cannot: make it out of place (inplace=False) for the comparison. torch said: "
                            f"{str(exc).splitlines()[0]}")
        hint.__cause__ = exc
        return hint
    return exc


def _param_grads(model: Any, canon: Callable[[str], str | None]) -> list[tuple[str, Any]]:
    """(name, .grad) of every parameter of a module `canon` keeps, the module's name after `canon`
    (each parameter once, by its first name)."""
    out = []
    for qname, p in model.named_parameters():
        owner, _, leaf = qname.rpartition(".")
        name = canon(owner)
        if name is not None:
            out.append((f"{name}.{leaf}" if name else leaf, p.grad))
    return out


_LOSS = "<loss>"


class _GradRecorder:
    """The backward phase of compare_modules: runs go one at a time, model_a's last. Until then each
    gradient is copied to the host under its key; model_a's are judged against those as they arrive
    (in its backward execution order), then the parameters'."""

    def __init__(self, n: int, judge: _Judge, canon: Callable[[str], str | None]):
        self.n, self.judge, self.canon = n, judge, canon
        self.kept: list[dict[tuple, Any]] = [{} for _ in range(n)]  # side -> key -> host copy
        self.seen: set[tuple] = set()  # keys model_a brought
        self.entries: list[ModuleEntry] = []
        self.side, self.order = -1, 0.0

    def start(self, side: int, base: float) -> None:
        self.side, self.order = side, base

    def _judge(self, name: str, call: int, path: str, phase: str, grad: Any) -> None:
        key = (name, call, path)
        self.seen.add(key)
        b = self.kept[1].pop(key, None)
        gold = self.kept[2].pop(key, None) if self.n > 2 else None
        order, self.order = self.order, self.order + 1
        if b is None:
            self.entries.append(ModuleEntry(name, call, path, order, None, False, "structure", "only in model_a",
                                            phase=phase))
            return
        if grad is None and b is False:  # (a frozen parameter, in both)
            return
        if grad is None or b is False:
            ok = False
            self.entries.append(ModuleEntry(name, call, path, order, None, ok, "structure",
                                            "no gradient in model_a" if grad is None else "no gradient in model_b",
                                            phase=phase))
            return
        a = grad.detach()
        if a.device != b.device:
            a = a.to(b.device)
        with_gold = gold is not None and gold is not False
        e = self.judge.entry(name, call, path, order, a, b, gold if with_gold else None, use_reference=with_gold)
        if self.n > 2 and not with_gold:
            e.rule += " (the reference has no such gradient)"
        e.phase = phase
        self.entries.append(e)

    def arrive(self, side: int, name: str, call: int, path: str, grad: Any) -> None:
        if side != self.side:  # (a graph left from a run the caller stopped: not this phase's)
            return
        if side == 0:
            self._judge(name, call, path, "backward", grad)
        else:
            self.kept[side][(name, call, path)] = grad.detach().to("cpu", copy=True)

    def parameters(self, side: int, named: list[tuple[str, Any]]) -> None:
        for name, g in named:
            if side == 0:
                self._judge(name, 0, ".grad", "parameter", g)
            else:  # (False: the parameter is there and got no gradient)
                self.kept[side][(name, 0, ".grad")] = False if g is None else g.detach().to("cpu", copy=True)

    def finish(self) -> list[ModuleEntry]:
        for side in range(1, self.n):
            for (name, call, path), g in self.kept[side].items():
                if side == 1 and g is not False:  # (what only the reference has is not a divergence)
                    self.entries.append(ModuleEntry(name, call, path, self.order, None, False, "structure",
                                                    "only in model_b",
                                                    phase="parameter" if path == ".grad" else "backward"))
        return self.entries


# ---- the lockstep rendezvous ---------------------------------------------------------------------


class _Rendezvous:
    """N runs hand in their module outputs by key (name, call); the last to bring a key's output
    judges it while the others wait, holding theirs by reference. A key is expected from the runs
    whose models have a module of that name (a name model_a or model_b lacks is never waited for:
    it is recorded as found in one run). If a model calls a module more often than another, runs can
    still wait on each other; then the run that has waited longest goes on, keeping a copy of its
    output while the others run (none once they have all finished)."""

    def __init__(self, names: list[set[str]], judge: Callable[[tuple, dict], None]):
        self.n = len(names)
        self.names = names
        self.judge = judge
        self.cv = threading.Condition()
        self.pending: dict[tuple, dict[int, Any]] = {}
        self.done: set[tuple] = set()
        self.waiting: list[tuple | None] = [None] * self.n  # the key a run waits for
        self.since = [0] * self.n  # when it began to wait (a sequence number)
        self.seq = 0
        self.finished = [False] * self.n
        self.failed: BaseException | None = None
        self.unmatched: list[tuple[int, tuple, list[str], float]] = []  # (side, key, leaf paths, order hint)
        self.order_hint: Callable[[], float] = lambda: 0.0

    def expected(self, name: str) -> set[int]:
        return {i for i in range(self.n) if name in self.names[i]}

    def arrive(self, side: int, key: tuple, outs: list) -> None:
        expected = self.expected(key[0])
        with self.cv:
            if self.failed is not None:
                raise RuntimeError("another run failed") from self.failed
            if not {0, 1} <= expected:  # model_a or model_b has no such module: nothing to compare it with
                self.unmatched.append((side, key, [p for p, _ in outs], self.order_hint()))
                return
            slot = self.pending.setdefault(key, {})
            slot[side] = outs
            complete = set(slot) >= expected
            if complete:
                del self.pending[key]
        if complete:
            try:
                self.judge(key, slot)
            finally:
                with self.cv:
                    self.done.add(key)
                    self.cv.notify_all()
            return
        with self.cv:
            self.seq += 1
            self.waiting[side], self.since[side] = key, self.seq
            self.cv.notify_all()  # (a waiter may now see that everyone waits)
            try:
                while key not in self.done and self.failed is None and not self._released(side):
                    self.cv.wait()
            finally:
                self.waiting[side] = None
            if key in self.done or self.failed is not None:
                return
            slot = self.pending.get(key)
            if slot is not None and side in slot:
                if all(self.finished[i] for i in range(self.n) if i != side):
                    slot[side] = None  # (never to be matched: only its name is kept)
                else:
                    slot[side] = [(p, t.detach().clone()) for p, t in outs]
            self.cv.notify_all()

    def _stuck(self, i: int) -> bool:
        """Run i waits for a key not yet complete (a run woken for a completed key is not stuck)."""
        return self.waiting[i] is not None and self.waiting[i] not in self.done

    def _released(self, side: int) -> bool:
        """Every other run is stuck or finished, and this one has waited longest: it goes on."""
        others = [i for i in range(self.n) if i != side]
        if not all(self.finished[i] or self._stuck(i) for i in others):
            return False
        return all(self.finished[i] or self.since[i] > self.since[side] for i in others)

    def abort(self, error: BaseException) -> None:
        """The caller stopped (Ctrl-C): every run raises at its next module output, waiters wake."""
        with self.cv:
            if self.failed is None:
                self.failed = error
            self.cv.notify_all()

    def finish(self, side: int, error: BaseException | None = None) -> None:
        with self.cv:
            self.finished[side] = True
            if error is not None and self.failed is None:
                self.failed = error
            self.cv.notify_all()


_RUN = threading.local()  # which run the current thread executes: (its comparison's rendezvous, side)


def _hook_calls(model: Any, canon: Callable[[str], str | None], on_call: Callable[[str, int, Any], None],
                active: Callable[[], bool] | None = None) -> tuple[list, set[str]]:
    """A forward hook on every submodule `canon` names: ``on_call(name, call, output)``, where `call`
    counts that module's calls from 0 (a module called twice in a forward is two entries). When
    `active` is given, a call it refuses is neither counted nor passed on. Returns the hook handles
    and the names hooked."""
    calls: dict[str, int] = {}
    handles = []
    names = set()
    for qname, module in model.named_modules():
        name = canon(qname)
        if name is None:
            continue
        names.add(name)

        def hook(_module, _inputs, output, name=name):
            if active is not None and not active():
                return
            call = calls.get(name, 0)
            calls[name] = call + 1
            on_call(name, call, output)

        handles.append(module.register_forward_hook(hook))
    return handles, names


def _hook_modules(model: Any, side: int, canon: Callable[[str], str | None], arrive: Callable,
                  order: Callable | None, token: Any) -> tuple[list, set[str]]:
    def on_call(name: str, call: int, output: Any) -> None:
        if order is not None:
            order((name, call))
        arrive(side, (name, call), leaves(output))

    # (a module the models share is hooked once per model: each hook serves its own run, of its own
    # comparison: a run an earlier comparison left going feeds nothing here)
    return _hook_calls(model, canon, on_call, active=lambda: getattr(_RUN, "run", None) == (token, side))


def _canon(name_map, include, exclude) -> Callable[[str], str | None]:
    inc = [re.compile(p) for p in ([include] if isinstance(include, str) else include or [])]
    exc = [re.compile(p) for p in ([exclude] if isinstance(exclude, str) else exclude or [])]
    mapping = name_map if name_map is None or callable(name_map) else dict(name_map)

    def canon(qname: str) -> str | None:
        name = mapping(qname) if callable(mapping) else (mapping or {}).get(qname, qname)
        if name is None:
            return None
        if inc and not any(p.search(name) for p in inc):
            return None
        if any(p.search(name) for p in exc):
            return None
        return name

    return canon


def _check_number(name: str, value: Any, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def compare_modules(model_a: Any, model_b: Any, *args: Any, atol: float | None = None, rtol: float | None = None,
                    min_cosine: float | None = None, max_mismatch_ratio: float = 0.0, reference: Any = None,
                    name_map: Mapping[str, str] | Callable[[str], str | None] | None = None,
                    include: str | Iterable[str] | None = None, exclude: str | Iterable[str] | None = None,
                    backward: bool = False, loss_fn: Callable[[Any], Any] | None = None,
                    **kwargs: Any) -> ModuleReport:
    """Run ``model_a(*args, **kwargs)`` and ``model_b(...)`` (and ``reference(...)``) under
    ``torch.no_grad()`` with forward hooks on every submodule, and compare each module output of
    model_a with model_b's (model_b is the reference of ``ParityStats``) as soon as both exist.

    ``backward=True``: the forwards run with autograd, each run's loss (``loss_fn(output)``, or the
    output's ``loss`` when ``loss_fn`` is None: a Hugging Face model given ``labels``) is compared as
    ``<loss>#0``, and ``loss.backward()`` runs in each model (model_b's, the reference's, then
    model_a's, one at a time; every parameter's ``.grad`` is set to None first and holds that
    run's gradient afterwards). Compared then, with the same verdicts: the gradient every submodule
    sends back into each of its tensor inputs (positional or keyword; entries ``name#call
    .grad_input[i]`` / ``.grad_input.<keyword>``, phase "backward", in model_a's backward execution
    order), then every parameter's ``.grad`` (``<param name>#0.grad``, phase "parameter"). The
    report's ``first_backward_divergence`` names the first module, in backward order, whose
    gradient breaks the rule. Memory: every run's autograd graph (its activations) lives until its
    own backward, so at the peak all of them at once, as two or three training steps would hold;
    model_b's (and the reference's) gradients are copied to the host until model_a's backward
    reaches them. A module that changes an input in place is an error naming the fix (inplace=False).
    ``loss_fn`` without ``backward=True`` is an error.

    Outputs are matched by qualified module name (after ``name_map``: ``{name: canonical name}`` or a
    function, applied to every model's names; None drops a module), with the call index for modules
    called several times, and each tensor of a tuple/dict/dataclass output by its path. ``include``
    / ``exclude``: regexes (``re.search``) on the names. An entry passes when its mismatch fraction
    at ``atol``/``rtol`` (default: ``torch.testing.assert_close``'s per dtype) is at most
    ``max_mismatch_ratio`` and, if given, its cosine is at least ``min_cosine``. With
    ``reference`` (a third model, e.g. a float64 copy on the same device), each entry is judged by
    FlashAttention-2's rule instead: ``max|b - gold| <= 2 * max|a - gold| + 1e-5``, so model_a is
    the baseline (the same dtype as model_b, another implementation) and model_b the candidate.

    Memory: the runs go in lockstep (one thread each), so besides each model's own activations at
    most one module output per model is held at a time (by reference, while its run waits); a
    module found in one model only is copied and kept until its run ends. Returns a
    :class:`ModuleReport`.
    """
    torch = require("torch", "fp.compare_modules")
    from ..compare.files import check_min_cosine, check_mismatch_ratio

    atol = _check_number("atol", atol)
    rtol = _check_number("rtol", rtol)
    min_cosine = check_min_cosine(min_cosine)
    max_mismatch_ratio = check_mismatch_ratio(max_mismatch_ratio)
    models = [model_a, model_b] + ([reference] if reference is not None else [])
    for i, m in enumerate(models):
        if not isinstance(m, torch.nn.Module):
            raise TypeError(f"{('model_a', 'model_b', 'reference')[i]} must be a torch.nn.Module, got {type(m).__name__}")
    _check_backward_args(torch, backward, loss_fn, "the comparison")
    judge = _Judge(atol, rtol, min_cosine, max_mismatch_ratio, reference is not None)
    canon = _canon(name_map, include, exclude)
    order_a: dict[tuple, int] = {}
    entries: list[ModuleEntry] = []
    lock = threading.Lock()
    side_names = ("model_a", "model_b", "reference")

    def on_complete(key: tuple, slot: dict) -> None:
        name, call = key
        outs = [dict(slot[i]) if i in slot else None for i in range(len(models))]
        with_gold = outs[-1] is not None if reference is not None else False
        new = []
        for path, ta in slot[0]:
            order = order_a[key] + len(new) * 1e-6  # (leaves keep their order within the output)
            if path not in outs[1] or (with_gold and path not in outs[2]):
                new.append(ModuleEntry(name, call, path, order, None, False, "structure",
                                       "missing in " + ("model_b" if path not in outs[1] else "reference")))
                continue
            e = judge.entry(name, call, path, order, ta, outs[1][path], outs[2][path] if with_gold else None,
                            use_reference=with_gold)
            if reference is not None and not with_gold:
                e.rule += " (the reference has no such module)"
            new.append(e)
        for path in outs[1]:
            if path not in outs[0]:
                new.append(ModuleEntry(name, call, path, order_a[key] + 0.5, None, False, "structure",
                                       "missing in model_a"))
        with lock:
            entries.extend(new)

    def note_order(key: tuple) -> None:
        order_a[key] = len(order_a)

    handles: list[list] = []  # each run's hooks
    rv = _Rendezvous([set() for _ in models], on_complete)  # (the names are filled in below)
    rv.order_hint = lambda: len(order_a) - 0.5
    grads = _GradRecorder(len(models), judge, canon) if backward else None
    for side, model in enumerate(models):
        h, n = _hook_modules(model, side, canon, rv.arrive, note_order if side == 0 else None, rv)
        if grads is not None:
            h += _hook_input_grads(model, canon, functools.partial(grads.arrive, side),
                                   active=lambda side=side: getattr(_RUN, "run", None) == (rv, side))
            n.add(_LOSS)
        handles.append(h)
        rv.names[side] = n
    losses: list[Any] = [None] * len(models)

    grad_ctx = (torch.enable_grad if backward else
                torch.inference_mode if torch.is_inference_mode_enabled() else torch.no_grad)
    autocast = [(dev, torch.get_autocast_dtype(dev)) for dev in ("cpu", "cuda")
                if torch.is_autocast_enabled(dev)]

    def run(side: int) -> None:
        err = None
        _RUN.run = (rv, side)
        try:
            # (grad mode and autocast are per thread: the caller's carried over)
            with contextlib.ExitStack() as stack:
                stack.enter_context(grad_ctx())
                for dev, dtype in autocast:
                    stack.enter_context(torch.autocast(dev, dtype=dtype))
                output = models[side](*args, **kwargs)
                if backward:
                    losses[side] = _loss_of(output, loss_fn)
                    del output
                    if side == 0:
                        note_order((_LOSS, 0))
                    rv.arrive(side, (_LOSS, 0), [("", losses[side])])
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller)
            err = _in_place_hint(exc) if backward else exc
        finally:
            _RUN.run = None
            for h in handles[side]:  # (a run the caller stopped waiting for takes its hooks away itself)
                h.remove()
            rv.finish(side, err)

    # (daemon threads: a run stuck where no hook fires cannot keep the interpreter from exiting)
    threads = [threading.Thread(target=run, args=(i,), name=f"flashparity-run-{i}", daemon=True)
               for i in range(len(models))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException as exc:  # Ctrl-C here: every run stops at its next module, not at its end
        rv.abort(exc)
        for t in threads:
            if t.ident is not None:
                t.join()  # (a second Ctrl-C leaves it: its hooks stay until its next module stops it)
        raise
    finally:
        for side, t in enumerate(threads):
            if t.ident is None or not t.is_alive():
                for h in handles[side]:
                    h.remove()
    if rv.failed is not None:
        raise rv.failed
    if grads is not None:
        base = len(order_a) + 1.0
        for side in [*range(1, len(models)), 0]:  # (model_a's last: its gradients are judged as they come)
            for p in models[side].parameters():
                p.grad = None
            grads.start(side, base)
            losses[side].backward()
            losses[side] = None
            grads.parameters(side, _param_grads(models[side], canon))
        entries += grads.finish()
    only: dict[str, list[str]] = {("a", "b", "reference")[i]: [] for i in range(len(models))}
    found = [(side, key, [p for p, _ in outs] if outs else [""], order_a.get(key, len(order_a)))
             for key, slot in rv.pending.items() for side, outs in slot.items()]
    for side, (name, call), paths, order in rv.unmatched + found:
        label = ("a", "b", "reference")[side]
        for path in paths:
            only[label].append(f"{name or '<model>'}#{call}{path}")
        if side < 2 or reference is None:  # (a module only the reference has is listed, not a divergence)
            entries.append(ModuleEntry(name, call, paths[0] if len(paths) == 1 else "", order + 0.25, None, False,
                                       "structure", f"only in {side_names[side]}"))
    devices = sorted({str(p.device) for m in models for p in list(m.parameters())[:1]})
    meta = {"torch": torch.__version__, "devices": devices,
            "dtypes": [str(next(iter(m.parameters())).dtype).replace("torch.", "") if any(True for _ in m.parameters())
                       else None for m in models],
            "reference": reference is not None}
    return ModuleReport(entries, only, meta)


# ---- dumps ---------------------------------------------------------------------------------------

# A dump shard is closed once it holds this many bytes (a tensor never spans two shards).
DUMP_SHARD_BYTES = 1 << 30
_ST_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
             "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32",
             "uint64": "U64", "bool": "BOOL",
             "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


class _ShardWriter:
    """Safetensors shards written as tensors arrive: each tensor's bytes go to a data file at once
    (one tensor in host memory at a time); closing a shard writes its header and then the data."""

    def __init__(self, directory: str, shard_bytes: int):
        self.dir, self.shard_bytes = directory, shard_bytes
        self.index = 0
        self.files: list[str] = []
        self._open()

    def _open(self) -> None:
        self.header: dict[str, dict] = {}
        self.size = 0
        self.tmp = os.path.join(self.dir, f".shard-{self.index:05d}.data")
        self.fh = open(self.tmp, "wb")

    def add(self, key: str, t: Any) -> str:
        import torch

        dtype = _dtype_name(t)
        if dtype not in _ST_CODES:
            raise TypeError(f"cannot dump {key!r}: dtype {dtype} has no safetensors code")
        host = t.detach().to("cpu").contiguous()
        raw = host.reshape(-1).view(torch.uint8).numpy() if host.numel() else b""
        nbytes = host.numel() * host.element_size()
        if self.size and self.size + nbytes > self.shard_bytes:
            self.close_shard()
            self._open()
        self.fh.write(memoryview(raw).cast("B") if nbytes else b"")
        self.header[key] = {"dtype": _ST_CODES[dtype], "shape": list(host.shape),
                            "data_offsets": [self.size, self.size + nbytes]}
        self.size += nbytes
        return f"dump-{self.index:05d}.safetensors"

    def close_shard(self) -> None:
        import shutil

        self.fh.close()
        if self.header:
            raw = json.dumps(self.header, separators=(",", ":")).encode()
            raw += b" " * (-(8 + len(raw)) % 8)
            name = f"dump-{self.index:05d}.safetensors"
            with open(os.path.join(self.dir, name), "wb") as out, open(self.tmp, "rb") as data:
                out.write(len(raw).to_bytes(8, "little") + raw)
                shutil.copyfileobj(data, out, 16 << 20)
            self.files.append(name)
            self.index += 1
        os.remove(self.tmp)

    def close(self) -> None:
        self.close_shard()


def dump(model: Any, directory: str | os.PathLike, *args: Any, backward: bool = False,
         loss_fn: Callable[[Any], Any] | None = None, **kwargs: Any) -> dict:
    """Run ``model(*args, **kwargs)`` once under ``torch.no_grad()`` and write every submodule's
    output tensors to safetensors shards in ``directory`` (created; it must be empty or absent), with
    a manifest (``flashparity-dump.json``: execution order, names, call indices, paths, shapes,
    dtypes, the torch version and the device). Memory: one output tensor at a time is copied to the
    host and written. Compare two dumps with ``flashparity compare DIR_A DIR_B``. Returns the manifest.

    ``backward=True``: the forward runs with autograd, the loss (``loss_fn(output)``, or the
    output's ``loss``) is written as ``<loss>#0``, ``loss.backward()`` runs (every parameter's
    ``.grad`` set to None first), and the gradient each submodule sends back into each tensor input
    (``name#call.grad_input[i]`` / ``.grad_input.<keyword>``, as they come) and then every
    parameter's ``.grad`` (``<param name>#0.grad``) are written too; their manifest entries carry
    ``"phase": "backward"`` / ``"parameter"``, and a comparison of two such dumps judges them as
    ``compare_modules(backward=True)`` does.
    """
    torch = require("torch", "fp.dump")

    _check_backward_args(torch, backward, loss_fn, "the dump")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    if os.listdir(directory):
        raise ValueError(f"dump directory {directory!r} is not empty")
    writer = _ShardWriter(directory, DUMP_SHARD_BYTES)
    entries: list[dict] = []

    def write(name: str, call: int, path: str, t: Any, phase: str = "forward") -> None:
        key = f"{name or '<model>'}#{call}{path}"
        entry = {"key": key, "name": name, "call": call, "path": path, "shape": list(t.shape),
                 "dtype": _dtype_name(t), "device": str(t.device)}
        if phase != "forward":
            entry["phase"] = phase
        if entry["dtype"] in _ST_CODES:
            entry["file"] = writer.add(key, t)
        else:
            entry["skipped"] = f"no safetensors dtype for {entry['dtype']}"
        entries.append(entry)

    def on_call(name: str, call: int, output: Any) -> None:
        for path, t in leaves(output):
            write(name, call, path, t)

    def keep(qname: str) -> str:
        return qname

    handles, _ = _hook_calls(model, keep, on_call)
    if backward:
        handles += _hook_input_grads(model, keep, lambda name, call, path, g: write(name, call, path, g, "backward"))
    try:
        with torch.enable_grad() if backward else torch.no_grad():
            try:
                output = model(*args, **kwargs)
            except RuntimeError as exc:
                hint = _in_place_hint(exc) if backward else exc
                if hint is exc:
                    raise
                raise hint from exc
            if backward:
                loss = _loss_of(output, loss_fn)
                del output
                write(_LOSS, 0, "", loss.detach())
        if backward:
            for p in model.parameters():
                p.grad = None
            loss.backward()
            for name, g in _param_grads(model, keep):
                if g is not None:
                    write(name, 0, ".grad", g, "parameter")
    finally:
        for h in handles:
            h.remove()
        writer.close()
    manifest = {"format": "flashparity-dump", "version": 1, "torch": torch.__version__,
                "device": sorted({e["device"] for e in entries}), "entries": entries}
    from .._write import write_atomically

    data = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    write_atomically(os.path.join(directory, DUMP_MANIFEST), lambda fh: fh.write(data))
    return manifest


def is_dump(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, DUMP_MANIFEST))


def _manifest(path: str) -> dict:
    from ..io.source import BadFile, _regular, strict_json

    manifest = os.path.join(path, DUMP_MANIFEST)
    _regular(manifest)
    with open(manifest, "rb") as fh:
        doc = strict_json(fh.read(), f"{path!r}: {DUMP_MANIFEST}")
    if not isinstance(doc, dict) or doc.get("format") != "flashparity-dump" or not isinstance(doc.get("entries"), list):
        raise BadFile(f"{path!r}: {DUMP_MANIFEST} is not a flashparity dump manifest")
    for e in doc["entries"]:
        if (not isinstance(e, dict) or not {"key", "name", "call", "path"} <= set(e)
                or not all(isinstance(e[k], str) for k in ("key", "name", "path"))
                or isinstance(e["call"], bool) or not isinstance(e["call"], int)):
            raise BadFile(f"{path!r}: {DUMP_MANIFEST} has a malformed entry: {str(e)[:200]}")
    return doc


def _dump_phase(e: dict) -> str:
    phase = e.get("phase", "forward")
    return phase if phase in ("forward", "backward", "parameter") else "forward"


def compare_dumps(path_a: str, path_b: str, *, atol: float | None = None, rtol: float | None = None,
                  min_cosine: float | None = None, max_mismatch_ratio: float = 0.0, **compare_kw: Any) -> ModuleReport:
    """Two ``fp.dump`` directories compared with compare_modules' verdicts (model_b's dump is the
    reference), in model_a's execution order; ``compare_kw`` goes to ``files.compare_files``
    (``workers``, ``dask``, ``progress``, ``void2_as_bfloat16``, ``void1_as``)."""
    from ..compare.files import check_min_cosine, check_mismatch_ratio, compare_files

    judge = _Judge(atol, rtol, check_min_cosine(min_cosine), check_mismatch_ratio(max_mismatch_ratio), False)
    man_a, man_b = _manifest(path_a), _manifest(path_b)
    stats: dict[str, ParityStats] = {}
    body = compare_files(path_a, path_b, tolerance=lambda _n, da, db: judge.tolerances(da, db)
                         if da in _COMPARED and db in _COMPARED else (0.0, 0.0), stats_out=stats, **compare_kw)
    rows = {r["name"]: r for r in body["tensors"]}
    only_a, only_b = set(body["only_in_a"]), set(body["only_in_b"])
    entries = []

    def one(order: int, e: dict) -> ModuleEntry | None:
        key, row = e["key"], rows.get(e["key"])
        if row is None:
            if "skipped" in e:
                return ModuleEntry(e["name"], e["call"], e["path"], order, None, True, "not compared", e["skipped"])
            if key in only_a:
                return ModuleEntry(e["name"], e["call"], e["path"], order, None, False, "structure", "only in a")
            return None
        explicit = judge.atol is not None and judge.rtol is not None
        if key in stats and not explicit and not set(row["dtypes"]) <= set(_COMPARED):  # (FP8, as compare_modules)
            da, db = row["dtypes"]
            return ModuleEntry(e["name"], e["call"], e["path"], order, None, True, "not compared",
                               f"no default tolerances for {da} vs {db}: give atol and rtol")
        if key in stats:
            return judge.entry(e["name"], e["call"], e["path"], order, None, None, stats=stats[key])
        if row.get("exact"):  # (an integer or bool output, bit for bit)
            return judge.exact(e["name"], e["call"], e["path"], order, row["numel"], row["mismatches"])
        err = row.get("error")
        return ModuleEntry(e["name"], e["call"], e["path"], order, None, err is None,
                           "not compared" if err else "empty", err)

    for order, e in enumerate(man_a["entries"]):
        entry = one(order, e)
        if entry is not None:
            entry.phase = _dump_phase(e)
            entries.append(entry)
    # (one only in b: placed by b's order near where a would have it, within its own phase's lane)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for order, e in enumerate(man_a["entries"]):
        first.setdefault(_dump_phase(e), order)
        last[_dump_phase(e)] = order
    lanes = ("forward", "backward", "parameter")
    for order, e in enumerate(man_b["entries"]):
        if e["key"] in only_b:
            phase = _dump_phase(e)
            i = lanes.index(phase)
            lo = max((last[p] + 0.5 for p in lanes[:i] if p in last), default=-math.inf)
            hi = min((first[p] - 0.5 for p in lanes[i + 1:] if p in first), default=math.inf)
            entries.append(ModuleEntry(e["name"], e["call"], e["path"], min(max(order + 0.25, lo), hi), None, False,
                                       "structure", "only in b", phase=phase))
    only = {"a": list(body["only_in_a"]), "b": list(body["only_in_b"])}
    meta = {"torch": f"{man_a.get('torch')} / {man_b.get('torch')}",
            "devices": [f"a: {', '.join(man_a.get('device', []))}", f"b: {', '.join(man_b.get('device', []))}"],
            "dtypes": sorted({e.get('dtype', '?') for e in man_a["entries"]}),
            "a": path_a, "b": path_b}
    return ModuleReport(entries, only, meta)
