import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spec import (
    AutoregressiveDecoder,
    GreedyAcceptor,
    MedusaDrafter,
    SpeculativeDecoder,
    StaticTreeBuilder,
    TreeAttentionVerifier,
)
from spec.errors import CheckpointError
from spec.testing.models import tiny_model
from spec.training import DataError, MedusaObjective, TrainConfig, iter_texts, pack_blocks, shifted_head_targets, train
from spec.training import checkpoint as ckpt
from spec.trees import tree_from_choices


HERE = Path(__file__).parent


def test_head_targets_are_k_plus_2_ahead():
    tokens = torch.arange(6)[None]  # positions 0..5; inputs are 0..4
    targets, valid = shifted_head_targets(tokens, 2)
    assert targets[0, 0].tolist() == [2, 3]  # hidden at 0 -> head0 predicts 2, head1 predicts 3
    assert valid[0, 3].tolist() == [True, False]  # 3 + 3 = 6 is past the block
    assert valid[0, 4].tolist() == [False, False]


def strided_blocks(count: int, length: int, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    """Learnable data that needs context: each block counts up by its own stride (1, 2 or 3)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(vocab, (count, 1), generator=g)
    strides = torch.randint(1, 4, (count, 1), generator=g)
    return (starts + strides * torch.arange(length + 1)) % vocab


@pytest.fixture(scope="module")
def counting_model(tmp_path_factory):
    """A tiny Llama that has learned the strided corpus (so its own output is predictable)."""
    from spec.training import LanguageModelObjective

    model = tiny_model("llama", seed=0, vocab_size=64, dtype=torch.float32)
    config = TrainConfig(out_dir=str(tmp_path_factory.mktemp("lm")), steps=150, batch_size=16, lr=1e-2,
                         warmup_steps=20, checkpoint_every=1000, eval_every=1000, progress=False)
    train(LanguageModelObjective(model), strided_blocks(512, 24), config)
    return model.eval()


def mean_accepted_length(model, drafter, verifier=None) -> float:
    tree = tree_from_choices([[0], [1], [0, 0], [0, 1], [0, 0, 0]])
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree), verifier or TreeAttentionVerifier(model),
                                 GreedyAcceptor())
    prompts = strided_blocks(6, 4, seed=9)
    return sum(decoder.generate(p[None], max_new_tokens=40).mean_accepted_length for p in prompts) / len(prompts)


def test_medusa1_learns_raises_acceptance_and_leaves_the_backbone_untouched(counting_model, tmp_path):
    model = counting_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    drafter = MedusaDrafter.from_model(model, num_heads=3, num_layers=1, seed=0)
    objective = MedusaObjective(model, drafter.heads)
    heldout = strided_blocks(16, 24, seed=3)
    untrained = objective.evaluate(drafter.heads, heldout)
    untrained_length = mean_accepted_length(model, drafter)
    config = TrainConfig(out_dir=str(tmp_path), steps=150, batch_size=16, lr=1e-2, warmup_steps=10,
                         checkpoint_every=1000, eval_every=1000, progress=False)
    train(objective, strided_blocks(512, 24, seed=1), config)
    trained = objective.evaluate(drafter.heads, heldout)
    for k in range(3):  # chance is 1/64
        assert untrained[f"head{k}_top1"] < 0.2, untrained
        assert trained[f"head{k}_top1"] > 0.8, trained
    from spec.training.evaluation import acceptance_table

    table = acceptance_table(objective, drafter.heads, heldout, width=2)
    assert table.probs[0][0] == pytest.approx(trained["head0_top1"])
    trained_length = mean_accepted_length(model, drafter)
    assert trained_length > untrained_length + 1.0, (untrained_length, trained_length)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_self_distillation_matches_the_models_own_choices(counting_model, tmp_path):
    """Soft targets from the model itself, on text the model generated: heads learn its choices."""
    model = counting_model
    prompts = strided_blocks(64, 3, seed=4)
    ar = AutoregressiveDecoder(model)
    own_text = torch.stack([ar.generate(p[None], max_new_tokens=21, temperature=1.0, seed=i).sequences[0]
                            for i, p in enumerate(prompts)])
    drafter = MedusaDrafter.from_model(model, num_heads=2, num_layers=1, seed=0)
    objective = MedusaObjective(model, drafter.heads, soft_targets=True)
    heldout = own_text[-8:]
    before = objective.evaluate(drafter.heads, heldout)
    config = TrainConfig(out_dir=str(tmp_path), steps=100, batch_size=8, lr=1e-2, warmup_steps=10,
                         checkpoint_every=1000, eval_every=1000, progress=False)
    train(objective, own_text[:-8], config)
    after = objective.evaluate(drafter.heads, heldout)
    for k in range(2):
        assert after[f"head{k}_top1"] > max(0.5, before[f"head{k}_top1"] + 0.3), (before, after)


def test_killed_run_resumes_to_identical_weights(tmp_path):
    script = [sys.executable, str(HERE / "train_tiny.py")]
    steps = 40
    uninterrupted = tmp_path / "full"
    subprocess.run(script + [str(uninterrupted), str(steps)], check=True, cwd=HERE.parent)

    interrupted = tmp_path / "killed"
    proc = subprocess.Popen(script + [str(interrupted), str(steps)], cwd=HERE.parent,
                            env={**os.environ, "TRAIN_TINY_PAUSE_AFTER_CHECKPOINT": "3"})
    deadline = time.time() + 120
    while time.time() < deadline:
        pointer = interrupted / "latest"
        if pointer.exists() and int(pointer.read_text().split("-")[1]) >= 12:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (interrupted / "final.safetensors").exists(), "the run finished before it could be killed"
    killed_at = int((interrupted / "latest").read_text().split("-")[1])
    assert killed_at < steps
    subprocess.run(script + [str(interrupted), str(steps)], check=True, cwd=HERE.parent)

    a, b = load_file(uninterrupted / "final.safetensors"), load_file(interrupted / "final.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps_logged = [json.loads(line)["step"] for line in (interrupted / "log.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))


def test_crash_while_saving_never_leaves_a_half_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    ckpt.save_training_checkpoint(tmp_path, 1, model.state_dict(), optimizer, None, {})

    real_save = ckpt.save_file
    calls = []

    def crash_on_second_file(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-save")
        real_save(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_training_checkpoint(tmp_path, 2, model.state_dict(), optimizer, None, {})
    monkeypatch.setattr(ckpt, "save_file", real_save)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000001"
    step, weights, _ = ckpt.load_training_checkpoint(latest, torch.optim.AdamW(model.parameters()), None)
    assert step == 1 and set(weights) == {"weight", "bias"}
    (tmp_path / "latest").write_text("step-00000009")
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.latest_checkpoint(tmp_path)


def test_bad_training_data_is_refused(tmp_path):
    from spec.apps.shipped.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["def f(x):\n    return x\n" * 20], vocab_size=300)
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="fewer than one block"):
        pack_blocks(iter_texts(empty), tokenizer, 64)
    with pytest.raises(DataError, match="over the model's context"):
        pack_blocks(["x = 1\n" * 100], tokenizer, 1024, context=512)
    with pytest.raises(DataError, match="does not exist"):
        list(iter_texts(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(DataError, match="no string field 'text'"):
        list(iter_texts(bad))
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "def f():\\n    pass\\n"}\n' * 50)
    blocks = pack_blocks(iter_texts(good), tokenizer, 8)
    assert blocks.shape[1] == 9 and torch.equal(blocks[0, -1], blocks[1, 0])


def test_medusa2_trains_the_backbone_and_reports_perplexity(counting_model, tmp_path):
    import copy

    from spec.training import Medusa2Objective

    model = copy.deepcopy(counting_model)
    for p in model.parameters():
        p.requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    drafter = MedusaDrafter.from_model(model, num_heads=2, num_layers=1, seed=0)
    objective = Medusa2Objective(model, drafter.heads, head_warmup_steps=10)
    heldout = strided_blocks(16, 24, seed=3)
    start = objective.evaluate(objective.trainable(), heldout)
    config = TrainConfig(out_dir=str(tmp_path), steps=100, batch_size=8, lr=2e-3, warmup_steps=5,
                         checkpoint_every=1000, eval_every=1000, progress=False)
    train(objective, strided_blocks(256, 24, seed=1), config)
    end = objective.evaluate(objective.trainable(), heldout)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "Medusa-2 must update the backbone"
    assert "perplexity" in start and "perplexity" in end
    assert end["head0_top1"] > start["head0_top1"] + 0.3
    assert end["perplexity"] < 2 * start["perplexity"]  # joint training did not wreck the backbone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama with a real BPE tokenizer, saved like a transformers checkpoint."""
    from spec.apps.shipped.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("model")
    text = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 40
    tokenizer = train_tokenizer([text], vocab_size=320)
    model = tiny_model("llama", seed=0, vocab_size=len(tokenizer), dtype=torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "data.txt").write_text(text)
    return path


@pytest.mark.parametrize("drafter, recipe", [("medusa", "medusa1"), ("medusa", "medusa2"),
                                             ("medusa", "self-distill"), ("hydra", "hydra++"),
                                             ("clover", "clover"), ("kangaroo", "kangaroo"),
                                             ("eagle", "eagle"), ("eagle3", "eagle3")])
def test_spec_train_cli_writes_heads_log_and_plot(model_dir, tmp_path, drafter, recipe):
    from spec.apps.cli import main
    from transformers import AutoModelForCausalLM

    out = tmp_path / recipe
    code = main(["train", "--drafter", drafter, "--recipe", recipe, "--model", str(model_dir),
                 "--data", str(model_dir / "data.txt"), "--out", str(out), "--steps", "6", "--batch-size", "2",
                 "--block-size", "32", "--num-heads", "2", "--eval-every", "3", "--checkpoint-every", "3",
                 "--distill-tokens", "8", "--exit-layer", "1"])
    assert code == 0
    for name in ("log.jsonl", "head_accuracy.png", "summary.json", "heads/model.safetensors", "heads/config.json",
                 "acceptance_stats.json"):
        assert (out / name).exists(), name
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "eval_head0_top1" in line]
    assert [r["step"] for r in evals] == [3, 6]
    from spec.trees import AcceptanceStats, optimal_tree

    stats = AcceptanceStats.load(out / "acceptance_stats.json")  # the tree builders read it directly
    assert stats.depth == (1 if drafter == "kangaroo" else 2) and stats.width == 4
    assert optimal_tree(stats, 3).tree.num_nodes == 4
    base = AutoModelForCausalLM.from_pretrained(out / "model" if recipe == "medusa2" else model_dir)
    if drafter == "hydra":
        from spec import HydraDrafter

        assert HydraDrafter.from_pretrained(out / "heads", base).heads.prefix_layer is not None
    elif drafter == "clover":
        from spec import CloverDrafter

        CloverDrafter.from_pretrained(out / "heads", base)
    elif drafter == "eagle3":  # its draft vocabulary was chosen from the training data, not every token
        from spec import Eagle3Drafter

        loaded = Eagle3Drafter.from_pretrained(out / "heads", base)
        assert loaded.heads.d2t.numel() < loaded.heads.vocab
    elif drafter == "kangaroo":
        from spec import KangarooDrafter

        assert KangarooDrafter.from_pretrained(out / "heads", base).state.exit_layer == 1
    else:
        from spec.registry import DRAFTERS

        DRAFTERS[drafter].drafter.from_pretrained(out / "heads", base)


def test_spec_train_cli_refuses_unknown_drafter_and_bad_block_size(model_dir, tmp_path, capsys):
    from spec.apps.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--drafter", "no-such-drafter", "--model", str(model_dir), "--data", "x", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "invalid choice: 'no-such-drafter'" in capsys.readouterr().err
    assert main(["train", "--drafter", "medusa", "--model", str(model_dir), "--data", str(model_dir / "data.txt"),
                 "--out", str(tmp_path), "--block-size", "4096"]) == 2
    assert "over the model's context" in capsys.readouterr().err


def test_spec_train_cli_refuses_fsdp_for_a_head_only_recipe(model_dir, tmp_path, capsys):
    from spec.apps.cli import main

    assert main(["train", "--drafter", "medusa", "--recipe", "medusa1", "--sharding", "fsdp", "--model",
                 str(model_dir), "--data", str(model_dir / "data.txt"), "--out", str(tmp_path)]) == 2
    assert "--sharding fsdp is for recipes that train the model itself (medusa2)" in capsys.readouterr().err


def test_causal_pass_equals_the_cached_layer():
    from spec.runtime import ContextLayerCache, build_decoder_layer, causal_pass

    model = tiny_model("qwen2", seed=1, vocab_size=64)
    layer = build_decoder_layer(model, "test layer")
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hidden = torch.randn(1, 9, 32, dtype=torch.float64)
    cache = ContextLayerCache(model, layer, "test layer")
    chunked = torch.cat([cache.append(hidden[0, :4]), cache.append(hidden[0, 4:])])
    torch.testing.assert_close(causal_pass(model, layer, hidden, "test layer")[0], chunked)


@pytest.mark.parametrize("plus_plus", [False, True])
def test_hydra_training_learns_and_raises_acceptance(counting_model, tmp_path, plus_plus):
    from spec import HydraDrafter
    from spec.training.hydra import HydraObjective

    model = counting_model
    drafter = (HydraDrafter.hydra_plus_plus(model, num_heads=3, num_layers=2, seed=0) if plus_plus
               else HydraDrafter.from_model(model, num_heads=3, seed=0))
    objective = HydraObjective(model, drafter, teacher=plus_plus)
    heldout = strided_blocks(16, 24, seed=3)
    before_length = mean_accepted_length(model, drafter)
    config = TrainConfig(out_dir=str(tmp_path), steps=120, batch_size=16, lr=1e-2, warmup_steps=10,
                         checkpoint_every=1000, eval_every=1000, progress=False)
    train(objective, strided_blocks(512, 24, seed=1), config)
    drafter.heads.eval()
    metrics = objective.evaluate(drafter.heads, heldout)
    for k in range(3):
        assert metrics[f"head{k}_top1"] > 0.8, metrics
    assert mean_accepted_length(model, drafter) > before_length + 1.0


def test_clover_training_learns_and_raises_acceptance(counting_model, tmp_path):
    from spec import CloverDrafter
    from spec.training.clover import CloverObjective

    model = counting_model
    drafter = CloverDrafter.from_model(model, num_heads=3, seed=0)
    objective = CloverObjective(model, drafter)
    before_length = mean_accepted_length(model, drafter)
    config = TrainConfig(out_dir=str(tmp_path), steps=120, batch_size=16, lr=1e-2, warmup_steps=10,
                         checkpoint_every=1000, eval_every=1000, progress=False)
    train(objective, strided_blocks(512, 24, seed=1), config)
    drafter.heads.eval()
    metrics = objective.evaluate(drafter.heads, strided_blocks(16, 24, seed=3))
    for k in range(3):
        assert metrics[f"head{k}_top1"] > 0.8, metrics
    assert mean_accepted_length(model, drafter) > before_length + 1.0


def test_kangaroo_adapter_training_learns_the_full_models_choice(tmp_path):
    from spec import KangarooDrafter
    from spec.training.kangaroo import KangarooObjective

    model = tiny_model("llama", seed=0, vocab_size=64, dtype=torch.float32, num_layers=4)
    from spec.training import LanguageModelObjective

    lm_config = TrainConfig(out_dir=str(tmp_path / "lm"), steps=150, batch_size=16, lr=1e-2, warmup_steps=20,
                            checkpoint_every=1000, eval_every=1000, progress=False)
    train(LanguageModelObjective(model), strided_blocks(512, 24), lm_config)
    model.eval()
    drafter = KangarooDrafter.from_model(model, exit_layer=1, threshold=0.0, max_depth=3, seed=0)
    objective = KangarooObjective(model, drafter)
    heldout = strided_blocks(16, 24, seed=3)
    before = objective.evaluate(drafter.adapter, heldout)
    untrained_length = mean_accepted_length(model, drafter, verifier=drafter.verifier)
    config = TrainConfig(out_dir=str(tmp_path / "adapter"), steps=150, batch_size=16, lr=1e-2, warmup_steps=10,
                         checkpoint_every=1000, eval_every=1000, progress=False)
    train(objective, strided_blocks(512, 24, seed=1), config)
    drafter.adapter.eval()
    after = objective.evaluate(drafter.adapter, heldout)
    assert after["head0_top1"] > max(0.8, before["head0_top1"] + 0.2), (before, after)
    assert mean_accepted_length(model, drafter, verifier=drafter.verifier) > untrained_length + 0.5
