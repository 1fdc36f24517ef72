"""The shipped model and heads: they load offline, are really trained, and the demo works."""

import math
import os
import subprocess
import sys

import pytest
import torch

from spec import GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder, TreeAttentionVerifier
from spec.apps.shipped import (
    ROOT,
    heldout_prompts,
    load_shipped,
    load_shipped_drafter,
    load_shipped_tree,
    shipped_drafters,
    training_facts,
)
from spec.apps.shipped.corpus import corpus_files, read_corpus

#: Held-out loss bound (nats/token) over 48 blocks spread across every held-out module; the shipped model
#: measures about 3.3 there, and uniform guessing over 4096 tokens would be ln(4096) = 8.32.
HELDOUT_LOSS_BOUND = 4.0
#: Mean tokens per verify step on held-out snippets, greedy, with the shipped trees (measured at shipping:
#: medusa 1.87, clover 2.50, hydra 2.55, kangaroo 1.86; the bounds leave room for rounding, not for regressions).
MIN_ACCEPTED = {"medusa": 1.8, "clover": 2.2, "hydra": 2.2, "kangaroo": 1.6}


@pytest.fixture(scope="module")
def shipped():
    return load_shipped()


def test_everything_loads_offline_in_a_fresh_process():
    code = ("from spec.apps.shipped import load_shipped, load_shipped_drafter, shipped_drafters, load_shipped_tree\n"
            "m, t = load_shipped()\n"
            "for d in shipped_drafters():\n"
            "    load_shipped_drafter(d, m); load_shipped_tree(d)\n"
            "print('ok', len(shipped_drafters()))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME="/nonexistent")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    from spec.registry import DRAFTERS

    assert out.stdout.split() == ["ok", str(len(DRAFTERS))]  # every registered drafter ships heads


def test_shipped_files_are_small():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 60 * 2**20, f"shipped files take {total / 2**20:.1f} MB"


def test_model_is_really_trained(shipped):
    model, tokenizer = shipped
    text = "".join(read_corpus(corpus_files()["heldout"]))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    blocks = ids[: (ids.numel() // 256) * 256].view(-1, 256)  # the training block length
    blocks = blocks[:: max(blocks.shape[0] // 48, 1)][:48]
    with torch.no_grad():
        logits = model(blocks).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten()).item()
    assert loss < HELDOUT_LOSS_BOUND < math.log(model.config.vocab_size)
    assert training_facts()["heldout_loss"] < HELDOUT_LOSS_BOUND


@pytest.mark.parametrize("drafter_name", sorted(MIN_ACCEPTED))
def test_shipped_heads_are_really_trained(shipped, drafter_name):
    model, tokenizer = shipped
    assert drafter_name in shipped_drafters()
    drafter = load_shipped_drafter(drafter_name, model)
    verifier = getattr(drafter, "verifier", None) or TreeAttentionVerifier(model)  # Kangaroo brings its own
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(load_shipped_tree(drafter_name)), verifier,
                                 GreedyAcceptor())
    lengths = []
    for text in heldout_prompts(limit=4):
        prompt = tokenizer(text, return_tensors="pt").input_ids
        lengths.append(decoder.generate(prompt, max_new_tokens=48).mean_accepted_length)
    assert sum(lengths) / len(lengths) > MIN_ACCEPTED[drafter_name], lengths


def test_demo_completions_are_identical(capsys):
    from spec.apps.cli import main

    for drafter, repeats in (("medusa", []), ("kangaroo", ["--repeats", "1"])):
        assert main(["demo", "--drafter", drafter, "--max-new-tokens", "24", *repeats]) == 0
        out = capsys.readouterr().out
        assert "identical completions: True" in out
        assert ("median of 5 interleaved pairs; single pairs " in out) == (not repeats), out  # default: 5 runs each
        # On the CPU, heads draft with int8 weights by default; Kangaroo drafts with the model's own layers.
        assert f"draft weights: {'none' if drafter == 'kangaroo' else 'int8'}" in out, out
        if drafter == "medusa":  # the demo compiles by default, CPU included, and says so
            assert "compiling the speculative decoder's step" in out and "torch.float32, compiled;" in out, out
    assert main(["demo", "--drafter", "ngram+clover", "--tree-builder", "cost", "--max-new-tokens", "24",
                 "--repeats", "1", "--draft-weights", "float", "--compile", "off"]) == 0
    out = capsys.readouterr().out
    assert "identical completions: True" in out and "sized each step by measured cost" in out
    assert "draft weights: float" in out and "torch.float32, eager;" in out and "compiling" not in out
    for bad in (["--drafter", "ngram+kangaroo"], ["--drafter", "kangaroo", "--tree-builder", "cost"],
                ["--drafter", "ngram+nothing"], ["--random-model", "--tree-builder", "cost"]):
        assert main(["demo", *bad]) == 2


def test_spec_bench_smoke_on_the_shipped_model(tmp_path, capsys):
    from spec.apps.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "--num-prompts", "2", "--max-new-tokens", "8", "--repeats", "1", "--warmup", "0",
                 "--verifiers", "generic,fast", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| medusa/generic |" in report and "| medusa/fast |" in report and "DIFFERS" not in report
    assert "| transformers_generate |" in report and "outside forward %" in report
    for name in ("report.json", "speedup.png", "accepted.png", "stages.png"):
        assert (out / name).stat().st_size > 0
    import json

    # What each method's heads drafted with: int8 on the CPU by default (--draft-weights auto).
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["draft_weights"] == {"medusa/generic": "int8", "medusa/fast": "int8"}, settings


def test_spec_bench_merged_cost_aware_and_sweep(tmp_path):
    """Lookup merged with heads, on its static tree and pruned by measured cost each step, then a sweep."""
    import json

    from spec.apps.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "--drafters", "ngram+clover", "--tree-builder", "static,cost", "--num-prompts", "1",
                 "--max-new-tokens", "8", "--repeats", "2", "--warmup", "0", "--no-transformers", "--no-profile",
                 "--sweep", "1,3", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for row in ("ngram+clover/static", "ngram+clover/cost"):
        assert f"| {row} |" in report
    assert "DIFFERS" not in report
    sweep = json.loads((out / "sweep.json").read_text())
    assert [p["max_new_tokens"] for p in sweep["points"]] == [1, 3]
    assert set(sweep["points"][0]["speedup"]) == {"autoregressive", "ngram+clover/static", "ngram+clover/cost"}
    assert "| 1 |" in (out / "sweep.md").read_text()
    assert main(["bench", "--drafters", "kangaroo", "--tree-builder", "cost", "--out", str(out)]) == 2
    assert main(["bench", "--drafters", "ngram+kangaroo", "--out", str(out)]) == 2
    assert main(["bench", "--sweep", "1,x", "--out", str(out)]) == 2
    assert main(["bench", "--tree-builder", "dynamic", "--out", str(out)]) == 2


def test_spec_bench_compares_acceptors_on_the_same_drafter(tmp_path):
    from spec.apps.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "--num-prompts", "1", "--max-new-tokens", "8", "--repeats", "1", "--warmup", "0",
                 "--temperature", "0.7", "--acceptors", "rejection,traversal,block", "--no-transformers",
                 "--no-profile", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for row in ("| medusa/rejection |", "| medusa/traversal |", "| medusa/block |"):
        assert row in report
    assert main(["bench", "--acceptors", "greedy", "--temperature", "0.7", "--out", str(out)]) == 2
    assert main(["bench", "--acceptors", "fastest", "--out", str(out)]) == 2


def test_ship_tree_sizes_a_tree_from_the_shipped_files(shipped, tmp_path):
    """What `spec build-model --heads NAME --trees-only` does, into a scratch directory."""
    from spec.apps.shipped.build import ship_tree
    from spec.trees import load_tree

    model, tokenizer = shipped
    meta = ship_tree(model, tokenizer, load_shipped_drafter("medusa", model), "medusa", destination=tmp_path,
                     prompts=2, new_tokens=16)
    tree, saved = load_tree(tmp_path / "trees" / "medusa.json")
    assert tree.num_nodes == meta["budget"] + 1 and saved["draft_costs"] and saved["verify_costs"]
    assert (tmp_path / "stats" / "medusa.json").exists() and (tmp_path / "trees" / "medusa.costs.json").exists()


def test_spec_bench_measures_each_head_drafter_once_per_draft_weights(tmp_path):
    import json

    from spec.apps.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "--drafters", "medusa,ngram", "--draft-weights", "float,int8", "--num-prompts", "1",
                 "--max-new-tokens", "6", "--repeats", "1", "--warmup", "0", "--no-transformers", "--no-profile",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    # n-gram lookup has no heads: measured once, not once per choice.
    assert report["settings"]["draft_weights"] == {"medusa/float": "float", "medusa/int8": "int8", "ngram": "none"}
    for method in report["methods"]:
        # The ceiling comes from the run's own verify time: never below the speedup reached.
        assert method["ceiling_speedup"] >= method["speedup"] * (1 - 1e-9), method
    assert main(["bench", "--draft-weights", "float,int4", "--out", str(tmp_path / "bad")]) == 2
