"""fp.compare_modules, fp.dump and the dump comparison on a small transformer (tests/tiny_transformer.py):
two attention implementations agree; a perturbed layer is found by name; bfloat16 runs are judged
against a float64 gold run; dumps written in other processes compare through the CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import flashparity as fp  # noqa: E402
from flashparity.cli import main  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tiny_transformer import pair  # noqa: E402


def perturb(model, name: str, scale: float = 1e-2):
    with torch.no_grad():
        w = model.get_submodule(name).weight
        w[3, 5] += scale * (w.abs().max() + 1)
    return model


def test_eager_and_sdpa_attention_match_at_default_tolerances():
    a, b, ids = pair(0)
    rep = fp.compare_modules(a, b, ids)
    assert rep.ok, str(rep)
    assert rep.first_divergence is None
    keys = [e.key for e in rep.entries]
    assert keys[0] == "embed#0" and keys[-1] == "<model>#0.hidden"  # execution order, the root last
    assert "layers.2.attn#0" in keys and "<model>#0.logits" in keys
    assert {e.rule for e in rep.entries} == {"isclose(atol=1e-05, rtol=1.3e-06)"}
    assert all(e.stats.numel > 0 for e in rep.entries)
    json.dumps(rep.to_dict())  # JSON-ready


def test_a_perturbed_linear_deep_in_the_model_is_the_first_divergence():
    a, b, ids = pair(1)
    perturb(b, "layers.2.mlp.down")
    rep = fp.compare_modules(a, b, ids)
    assert not rep.ok
    fd = rep.first_divergence
    assert (fd.name, fd.call, fd.path) == ("layers.2.mlp.down", 0, "")
    before = [e for e in rep.entries if e.order < fd.order]
    assert before and all(e.ok for e in before)
    assert rep.to_dict()["first_divergence"] == "layers.2.mlp.down#0"
    text = str(rep)
    assert "first divergence: layers.2.mlp.down#0" in text


def test_bfloat16_runs_fail_a_fixed_atol_and_pass_the_gold_rule():
    a, b, ids = pair(2, dtype=torch.bfloat16)
    gold = copy.deepcopy(a).to(torch.float64)
    strict = fp.compare_modules(a, b, ids, atol=1e-6, rtol=0.0)
    assert not strict.ok
    rep = fp.compare_modules(a, b, ids, reference=gold)
    assert rep.ok, str(rep)
    assert all(e.ref is not None and e.ref["err_b"] <= 2 * e.ref["err_a"] + 1e-5 for e in rep.entries)
    perturb(b, "layers.1.attn.o", 0.5)
    bad = fp.compare_modules(a, b, ids, reference=gold)
    assert not bad.ok and bad.first_divergence.name == "layers.1.attn.o"


def test_name_map_include_exclude_and_call_indices():
    a, b, ids = pair(3)

    class Twice(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return self.inner(ids)["logits"] + self.inner(ids)["logits"]

    rep = fp.compare_modules(Twice(a), Twice(b), ids, include=r"^inner\.layers\.0\.mlp\.(up|down)$")
    assert [e.key for e in rep.entries] == ["inner.layers.0.mlp.up#0", "inner.layers.0.mlp.down#0",
                                            "inner.layers.0.mlp.up#1", "inner.layers.0.mlp.down#1"]
    renamed = fp.compare_modules(a, b, ids, exclude=r"attn|norm",
                                 name_map=lambda n: n.replace("layers.", "blocks."))
    assert all("attn" not in e.key and "norm" not in e.key for e in renamed.entries)
    assert any(e.key.startswith("blocks.3.") for e in renamed.entries) and renamed.ok


def test_structural_differences_are_reported_not_hung():
    a, b, ids = pair(4)
    b.layers[1].mlp.act = torch.nn.Sequential(torch.nn.GELU(), torch.nn.Identity())  # two extra modules in b
    rep = fp.compare_modules(a, b, ids)
    assert not rep.ok
    assert "layers.1.mlp.act.0#0" in rep.only["b"] and "layers.1.mlp.act.1#0" in rep.only["b"]
    assert not rep.only["a"]
    assert all(e.ok for e in rep.entries if e.stats is not None)  # everything else still matches
    fd = rep.first_divergence
    assert (fd.key, fd.rule, fd.error) == ("layers.1.mlp.act.0#0", "structure", "only in model_b")


@pytest.mark.parametrize("where", ["a", "b", "reference"])
def test_an_extra_module_holds_nothing_back(where, held):
    a, b, ids = pair(10)
    gold = copy.deepcopy(a).double()
    model = {"a": a, "b": b, "reference": gold}[where]
    model.layers[0].mlp.act = torch.nn.Sequential(model.layers[0].mlp.act, torch.nn.Identity())
    rep = fp.compare_modules(a, b, ids, reference=gold)
    assert max(held) <= 2, max(held)
    assert rep.only[where] == ["layers.0.mlp.act.0#0", "layers.0.mlp.act.1#0"]
    assert rep.ok == (where == "reference")  # (a module only the reference has is listed, not a divergence)


def test_the_same_model_twice_and_shared_submodules():
    a, b, ids = pair(11)
    assert fp.compare_modules(a, a, ids).ok  # (a determinism check: hooks of both runs on one module)
    b.embed = a.embed
    rep = fp.compare_modules(a, b, ids)
    assert rep.ok and rep.entries[0].key == "embed#0"


def test_empty_and_infinite_outputs_print_and_render(tmp_path):
    class M(torch.nn.Module):
        def __init__(self, big):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.big = big

        def forward(self, x):
            y = self.lin(x)
            return y[:, :0], y * self.big, torch.argmax(y, -1)

    torch.manual_seed(0)
    a, b = M(1.0), M(float("inf"))
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4)
    rep = fp.compare_modules(a, b, x)
    text = str(rep)
    assert "<model>#0[0]" in text and "<model>#0[2]" in text
    assert rep.first_divergence.key == "<model>#0[1]"
    rep.to_html(tmp_path / "r.html")
    assert ": inf</title></path>" in (tmp_path / "r.html").read_text()  # (the marker of an infinite value)


def test_the_gold_rule_counts_equal_infinities_as_equal():
    class M(torch.nn.Module):
        def forward(self, x):
            return x.masked_fill(x > 0.5, float("-inf"))

    x = torch.rand(8, 8)
    rep = fp.compare_modules(M(), M(), x.bfloat16(), reference=M())
    # (the gold run gets the same bf16 input: -inf at the same places, equal elsewhere)
    assert rep.ok, str(rep)
    assert rep.entries[0].ref["err_a"] == 0.0


def test_masked_logits_pass_the_cosine_gate():
    class M(torch.nn.Module):
        def forward(self, x):
            return x.masked_fill(x > 0.5, float("-inf"))

    x = torch.rand(8, 8)
    rep = fp.compare_modules(M(), M(), x, min_cosine=0.999)
    assert rep.ok, str(rep)
    e = rep.entries[0]
    assert e.stats.max_abs_diff == 0.0 and e.stats.cosine_sim == 1.0 and e.stats.equal_inf == int((x > 0.5).sum())


def test_a_run_that_raises_is_raised_and_nothing_hangs():
    a, b, _ = pair(5)
    with pytest.raises(IndexError):
        fp.compare_modules(a, b, torch.tensor([[1000]]))  # out of the embedding's range


@pytest.fixture
def held(monkeypatch):
    """The number of outputs waiting in the rendezvous, seen at each arrival."""
    from flashparity.models import modules

    counts = []
    real = modules._Rendezvous.arrive

    def arrive(self, side, key, outs):
        with self.cv:
            counts.append(sum(len(v) for v in self.pending.values()))
        return real(self, side, key, outs)

    monkeypatch.setattr(modules._Rendezvous, "arrive", arrive)
    return counts


def test_the_runs_hold_one_output_each_at_most(held):
    a, b, ids = pair(6)
    gold = copy.deepcopy(a).double()
    fp.compare_modules(a, b, ids, reference=gold)
    assert held and max(held) <= 2  # three runs in lockstep: at most the other two's outputs wait


def test_html_report_is_self_contained(tmp_path):
    a, b, ids = pair(7)
    perturb(b, "layers.3.attn.v")
    rep = fp.compare_modules(a, b, ids)
    out = tmp_path / "report.html"
    rep.to_html(out)
    text = out.read_text()
    assert text.startswith("<!doctype html>") and "<svg" in text and "layers.3.attn.v#0" in text
    assert "http://" not in text and "https://" not in text and "<script" not in text


DUMP_SCRIPT = """
import sys, torch
sys.path.insert(0, {here!r})
import flashparity as fp
from tiny_transformer import pair
a, b, ids = pair(8)
model = a if sys.argv[1] == "a" else b
if sys.argv[1] == "b":
    with torch.no_grad():
        b.get_submodule("layers.2.mlp.up").weight[0, 0] += 1.0
fp.dump(model, sys.argv[2], ids)
"""


def test_dumps_from_separate_processes_compare_through_the_cli(tmp_path, capsys):
    script = tmp_path / "dump.py"
    script.write_text(DUMP_SCRIPT.format(here=HERE))
    for side in ("a", "b"):
        subprocess.run([sys.executable, str(script), side, str(tmp_path / side)], check=True)
    man = json.loads((tmp_path / "a" / "flashparity-dump.json").read_text())
    assert man["entries"][0]["key"] == "embed#0" and man["torch"] == torch.__version__
    code = main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", "--quiet",
                 "--html", str(tmp_path / "r.html")])
    body = json.loads(capsys.readouterr().out)
    assert code == 1 and body["first_divergence"] == "layers.2.mlp.up#0" and not body["ok"]
    assert (tmp_path / "r.html").read_text().count("layers.2.mlp.up#0") >= 1
    code = main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", "--quiet", "--report-only"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["first_divergence"] == "layers.2.mlp.up#0"
    assert "--report-only" in captured.err
    code = main(["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "OK" in out
    # the same report from the in-process comparison of the same runs
    a, b, ids = pair(8)
    with torch.no_grad():
        b.get_submodule("layers.2.mlp.up").weight[0, 0] += 1.0
    live = fp.compare_modules(a, b, ids).to_dict()
    assert [e["key"] for e in live["entries"]] == [e["key"] for e in body["entries"]]
    assert [e["stats"]["max_abs_diff"] for e in live["entries"]] == [e["stats"]["max_abs_diff"] for e in body["entries"]]


def test_dump_refuses_a_non_empty_directory(tmp_path):
    a, _, ids = pair(9)
    (tmp_path / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        fp.dump(a, tmp_path, ids)


def test_transformers_eager_and_sdpa_attention():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    eager = transformers.LlamaForCausalLM._from_config(config, attn_implementation="eager").eval()
    sdpa = transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(1))
    rep = fp.compare_modules(eager, sdpa, ids, include=r"^model\.layers\.|^lm_head$")
    assert rep.ok, str(rep)
    assert any(e.name == "model.layers.1.self_attn" for e in rep.entries)
