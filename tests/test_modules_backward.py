"""compare_modules(backward=True) and dump(backward=True): the loss, the gradient every module sends
back into its inputs (in backward execution order) and every parameter's gradient, judged as the
forward's outputs are; a layer whose backward alone is wrong is named; a small Hugging Face Llama
trains with flashparity's attention (when transformers is installed)."""

from __future__ import annotations

import copy
import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

import flashparity as fp  # noqa: E402
import flashparity.torch  # noqa: E402,F401
from flashparity.cli import main  # noqa: E402
from flashparity.models.modules import DUMP_MANIFEST, compare_dumps  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tiny_transformer import pair  # noqa: E402


def next_token_loss(ids):
    def loss(out):
        logits = out["logits"] if isinstance(out, dict) else out
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                 ids[:, 1:].reshape(-1))
    return loss


class ScaleGrad(torch.autograd.Function):
    """The identity forward; the backward scales the gradient: a bug only training sees."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


def break_backward(module, scale=1.01):
    """Make `module`'s output gradient wrong by `scale` (its forward output unchanged)."""
    return module.register_forward_hook(lambda _m, _i, out: ScaleGrad.apply(out, scale))


def test_eager_and_flashparity_attention_agree_forward_and_backward():
    a, b, ids = pair(0, impl_b="flashparity")
    rep = fp.compare_modules(a, b, ids, backward=True, loss_fn=next_token_loss(ids))
    assert rep.ok, str(rep)
    assert rep.first_divergence is None and rep.first_backward_divergence is None
    phases = {p: [e for e in rep.entries if e.phase == p] for p in ("forward", "backward", "parameter")}
    keys = {p: [e.key for e in es] for p, es in phases.items()}
    assert keys["forward"][-1] == "<loss>#0"
    # every module that takes a float input sends a gradient back: the embedding takes ids, so not it
    assert "layers.0.attn.q#0.grad_input[0]" in keys["backward"] and not any(k.startswith("embed#") for k in
                                                                             keys["backward"])
    assert keys["backward"][0] == "head#0.grad_input[0]"  # backward execution order: the last module first
    assert keys["backward"].index("layers.3#0.grad_input[0]") < keys["backward"].index("layers.0#0.grad_input[0]")
    assert sorted(keys["parameter"]) == sorted(f"{n}#0.grad" for n, _ in a.named_parameters())
    # the report orders lanes: forward, then backward, then parameters
    order = [e.phase for e in rep.entries]
    assert order == sorted(order, key=["forward", "backward", "parameter"].index)
    d = rep.to_dict()
    assert d["first_backward_divergence"] is None
    assert {e["phase"] for e in d["entries"] if "phase" in e} == {"backward", "parameter"}
    # model_a's and model_b's parameters hold this run's gradients (set to None first)
    a2 = copy.deepcopy(a)
    next_token_loss(ids)(a2(ids)).backward()
    for (n, p), p2 in zip(a.named_parameters(), a2.parameters()):
        assert torch.equal(p.grad, p2.grad), n


def test_a_layer_whose_backward_alone_is_wrong_is_named():
    a, b, ids = pair(1, impl_b="flashparity")
    b.layers[2].attn.v.weight.grad = torch.full_like(b.layers[2].attn.v.weight, 7.0)  # (stale: set to None first)
    handle = break_backward(b.layers[2].attn.v)
    try:
        rep = fp.compare_modules(a, b, ids, backward=True, loss_fn=next_token_loss(ids))
    finally:
        handle.remove()
    assert not rep.ok
    assert all(e.ok for e in rep.entries if e.phase == "forward"), str(rep)  # the forward is unchanged
    fbd = rep.first_backward_divergence
    assert fbd is rep.first_divergence
    assert fbd.key == "layers.2.attn.v#0.grad_input[0]", str(rep)
    bad_params = {e.name for e in rep.entries if e.phase == "parameter" and not e.ok}
    assert "layers.2.attn.v.weight" in bad_params and "layers.3.attn.v.weight" not in bad_params
    # the layers after it (in the forward) are fine: the backward reaches them first
    assert all(e.ok for e in rep.entries if e.phase == "backward" and e.name.startswith("layers.3"))
    assert "first backward divergence" not in str(rep).splitlines()[0]  # (it is the first divergence)
    assert "layers.2.attn.v#0.grad_input[0]" in str(rep).splitlines()[0]


def test_bfloat16_gradients_against_a_float64_gold_run():
    a, b, ids = pair(2, dtype=torch.bfloat16, impl_b="flashparity")
    gold = copy.deepcopy(a).double()
    rep = fp.compare_modules(a, b, ids, reference=gold, backward=True, loss_fn=next_token_loss(ids))
    # (the loss is one number: its two errors against the gold run are single draws, and the 2x rule on
    # them a coin toss; every tensor is judged on its largest error over many elements)
    assert all(e.ok for e in rep.entries if e.key != "<loss>#0"), str(rep)
    assert rep.entries[[e.key for e in rep.entries].index("<loss>#0")].ref is not None
    grads = [e for e in rep.entries if e.phase != "forward"]
    assert grads and all(e.ref is not None and e.ref["ratio"] <= 1 for e in grads)
    assert all(e.rule.startswith("max|b-gold| <= 2*max|a-gold|") for e in grads)


def test_dumps_with_gradients_compare_like_compare_modules(tmp_path, capsys):
    a, b, ids = pair(3, impl_b="flashparity")
    loss = next_token_loss(ids)
    man = fp.dump(a, tmp_path / "a", ids, backward=True, loss_fn=loss)
    phases = [e.get("phase", "forward") for e in man["entries"]]
    assert phases.count("backward") > 10 and phases.count("parameter") == len(list(a.parameters()))
    assert phases == sorted(phases, key=["forward", "backward", "parameter"].index)
    assert man["entries"][phases.index("backward") - 1]["key"] == "<loss>#0"
    fp.dump(b, tmp_path / "b", ids, backward=True, loss_fn=loss)
    rep = compare_dumps(str(tmp_path / "a"), str(tmp_path / "b"))
    assert rep.ok, str(rep)
    assert {e.phase for e in rep.entries} == {"forward", "backward", "parameter"}
    handle = break_backward(b.layers[1].mlp.up)
    try:
        fp.dump(b, tmp_path / "bad", ids, backward=True, loss_fn=loss)
    finally:
        handle.remove()
    rep = compare_dumps(str(tmp_path / "a"), str(tmp_path / "bad"))
    assert rep.first_backward_divergence.key == "layers.1.mlp.up#0.grad_input[0]", str(rep)
    with open(tmp_path / "bad" / DUMP_MANIFEST) as fh:
        assert json.load(fh)["entries"][-1]["key"].endswith(".grad")
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "bad")]) == 1
    assert "first divergence: layers.1.mlp.up#0.grad_input[0]" in capsys.readouterr().out


def test_html_report_draws_a_lane_per_phase(tmp_path):
    a, b, ids = pair(4, impl_b="flashparity")
    handle = break_backward(b.layers[0].attn.o, 1.1)
    try:
        rep = fp.compare_modules(a, b, ids, backward=True, loss_fn=next_token_loss(ids))
    finally:
        handle.remove()
    rep.to_html(tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "Forward: module outputs" in html and "Backward: the gradient each module sends back" in html
    assert "Parameter gradients" in html and "first backward divergence" not in html  # (it is the first)
    assert "layers.0.attn.o#0.grad_input[0]" in html


def test_backward_arguments_are_checked():
    a, b, ids = pair(5)
    with pytest.raises(ValueError, match="loss_fn"):  # the output, a dict, has no loss
        fp.compare_modules(a, b, ids, backward=True)
    with pytest.raises(ValueError, match="one element"):
        fp.compare_modules(a, b, ids, backward=True, loss_fn=lambda out: out["logits"])
    with pytest.raises(TypeError, match="backward must be"):
        fp.compare_modules(a, b, ids, backward="yes")
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        fp.compare_modules(a, b, ids, backward=True, loss_fn=3)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        fp.compare_modules(a, b, ids, backward=True, loss_fn=next_token_loss(ids))
    with pytest.raises(ValueError, match="loss_fn is used only with backward=True"):
        fp.compare_modules(a, b, ids, loss_fn=next_token_loss(ids))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        fp.dump(a, "/nonexistent/never-made", ids, backward=True, loss_fn="loss")
    frozen = copy.deepcopy(a).requires_grad_(False)
    with pytest.raises(ValueError, match="does not require a gradient"):
        fp.compare_modules(frozen, frozen, ids, backward=True, loss_fn=next_token_loss(ids))
    # a model a run can still use after the errors: no hook left behind
    assert fp.compare_modules(a, b, ids).ok


def test_frozen_parameters_are_left_out_and_a_one_sided_gradient_is_a_divergence():
    a, b, ids = pair(6, impl_b="flashparity")
    a.embed.weight.requires_grad_(False)
    b.embed.weight.requires_grad_(False)
    rep = fp.compare_modules(a, b, ids, backward=True, loss_fn=next_token_loss(ids))
    assert rep.ok and "embed.weight#0.grad" not in {e.key for e in rep.entries}
    b.head.weight.requires_grad_(False)
    rep = fp.compare_modules(a, b, ids, backward=True, loss_fn=next_token_loss(ids))
    bad = [e for e in rep.entries if not e.ok]
    assert [(e.key, e.error) for e in bad] == [("head.weight#0.grad", "no gradient in model_b")]


# ---- a Hugging Face Llama ------------------------------------------------------------------------


def tiny_llama(seed: int, impl: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   attention_dropout=0.0)
    cfg._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(cfg)
    ours = copy.deepcopy(model)
    ours.set_attn_implementation(flashparity.torch.register_hf(impl=impl))
    ids = torch.randint(0, 96, (2, 19), generator=torch.Generator().manual_seed(seed))
    return model, ours, ids


def test_a_hugging_face_llama_trains_with_flashparity_attention():
    eager, ours, ids = tiny_llama(0, "flash2")
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    rep = fp.compare_modules(sdpa, ours, input_ids=ids, labels=ids, backward=True)  # (the output's own loss)
    assert rep.ok, str(rep)
    assert any(e.key.startswith("model.layers.2.self_attn#0.grad_input") for e in rep.entries)
    # eager returns the attention weights too (flashparity does not): that, and only that, differs
    rep = fp.compare_modules(eager, ours, input_ids=ids, labels=ids, backward=True)
    assert {(e.key.split(".self_attn")[1], e.error) for e in rep.entries if not e.ok} == {("#0[1]", "missing in model_b")}
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    curve_e, curve_o = [], []
    for _ in range(6):
        for model, opt, curve in ((eager, opt_e, curve_e), (ours, opt_o, curve_o)):
            opt.zero_grad()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            curve.append(loss.item())
    assert curve_o[-1] < curve_o[0] - 0.3  # it learns
    assert fp.parity(torch.tensor(curve_e), torch.tensor(curve_o), atol=1e-5, rtol=1e-5).mismatches == 0
    for (n, pe), po in zip(eager.named_parameters(), ours.parameters()):
        assert fp.parity(pe.detach(), po.detach(), atol=1e-5, rtol=1e-4).mismatches == 0, n


def test_a_hugging_face_llama_layer_with_a_wrong_gradient_is_named():
    _, ours, ids = tiny_llama(1, "flash2")
    bad = copy.deepcopy(ours)
    handle = break_backward(bad.model.layers[1].self_attn.v_proj)
    try:
        rep = fp.compare_modules(ours, bad, input_ids=ids, labels=ids, backward=True)
    finally:
        handle.remove()
    assert all(e.ok for e in rep.entries if e.phase == "forward")
    assert rep.first_backward_divergence.key == "model.layers.1.self_attn.v_proj#0.grad_input[0]", str(rep)


def test_register_hf_refuses_names_transformers_takes_for_flash_attention():
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="without 'flash'"):
        flashparity.torch.register_hf("flashparity")
    with pytest.raises(ValueError, match="impl"):
        flashparity.torch.register_hf("fp_other", impl="fast")


def test_hf_attention_takes_transformers_layouts_and_refuses_what_it_cannot_do():
    """The AttentionInterface function itself (no transformers needed): BHSD in, BSHD out, GQA as it
    comes, causal from the module, and errors naming what it does not take."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 9, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 2, 9, 16, generator=g, requires_grad=True) for _ in range(2))

    class Module:
        is_causal = True

    out, weights = flashparity.torch.hf_attention(Module(), q, k, v, None, scaling=0.3)
    assert weights is None and out.shape == (2, 9, 4, 16)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    assert fp.parity(out.detach(), ref.transpose(1, 2).detach(), atol=1e-6, rtol=1e-5).mismatches == 0
    dout = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.transpose(1, 2))
    for x, y in zip(grads, ref_grads):
        assert fp.parity(x, y, atol=1e-5, rtol=1e-4).mismatches == 0
    Module.is_causal = False
    out, _ = flashparity.torch.hf_attention(Module(), q, k, v, None, is_causal=None)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert fp.parity(out.detach(), ref.transpose(1, 2).detach(), atol=1e-6, rtol=1e-5).mismatches == 0
    with pytest.raises(NotImplementedError, match="attention_mask"):
        flashparity.torch.hf_attention(Module(), q, k, v, torch.ones(2, 1, 9, 9, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="dropout=0.1"):
        flashparity.torch.hf_attention(Module(), q, k, v, None, dropout=0.1)
    with pytest.raises(NotImplementedError, match="output_attentions"):
        flashparity.torch.hf_attention(Module(), q, k, v, None, output_attentions=True)


def test_a_module_that_changes_its_input_in_place_is_an_error_naming_the_fix(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(inplace=True), torch.nn.Linear(8, 1))
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match=r"in place .*inplace=False") as info:
        fp.compare_modules(model, copy.deepcopy(model), x, backward=True, loss_fn=lambda y: y.sum())
    assert "InputGrad" in str(info.value.__cause__)
    with pytest.raises(RuntimeError, match=r"inplace=False"):
        fp.dump(model, tmp_path / "d", x, backward=True, loss_fn=lambda y: y.sum())
    model[1].inplace = False
    assert fp.compare_modules(model, copy.deepcopy(model), x, backward=True, loss_fn=lambda y: y.sum()).ok


def test_hf_attention_sliding_window_and_softcap_as_transformers_passes_them():
    """sliding_window W (transformers: a key at most W - 1 positions back, FA2's window_size (W - 1,
    W - 1) under causal) and softcap (Gemma's tanh cap), against an explicit masked softmax."""
    g = torch.Generator().manual_seed(8)
    q = torch.randn(1, 4, 20, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 20, 8, generator=g, dtype=torch.float64) for _ in range(2))

    class Module:
        is_causal = True

    out, _ = flashparity.torch.hf_attention(Module(), q, k, v, None, scaling=0.5, sliding_window=5, softcap=3.0)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    s = 3.0 * torch.tanh((q @ kk.transpose(-1, -2)) * 0.5 / 3.0)
    i, j = torch.arange(20)[:, None], torch.arange(20)[None, :]
    s = s.masked_fill((j > i) | (j < i - 4), float("-inf"))
    ref = (torch.softmax(s, dim=-1) @ vv).transpose(1, 2)
    assert fp.parity(out, ref, atol=1e-12, rtol=1e-10).mismatches == 0
    # a window as long as the keys is no window (transformers passes it only when it cuts)
    out, _ = flashparity.torch.hf_attention(Module(), q, k, v, None, sliding_window=20)
    full, _ = flashparity.torch.hf_attention(Module(), q, k, v, None)
    assert torch.equal(out, full)
