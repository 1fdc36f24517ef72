"""Training as a new user would break it: re-runs, divergence, torn and corrupt files, changed options, full disks."""

from __future__ import annotations

import errno
import json
import math

import pytest
import torch

from spec import MedusaDrafter
from spec.errors import CheckpointError, ConfigurationError, DataError, TrainingDivergedError
from spec.testing.models import tiny_model
from spec.training import MedusaObjective, TrainConfig, iter_texts, train
from spec.training import checkpoint as ckpt

VOCAB = 64


def blocks(count=64, length=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(VOCAB, (count, 1), generator=g)
    return (starts + torch.arange(length + 1)) % VOCAB


def objective(seed=0) -> MedusaObjective:
    model = tiny_model("llama", seed=0, vocab_size=VOCAB, dtype=torch.float32)
    drafter = MedusaDrafter.from_model(model, num_heads=2, num_layers=1, seed=seed)
    return MedusaObjective(model, drafter.heads)


def config(tmp_path, **changes) -> TrainConfig:
    settings = dict(out_dir=str(tmp_path), steps=4, batch_size=8, lr=1e-2, warmup_steps=1, checkpoint_every=2,
                    eval_every=2, progress=False)
    return TrainConfig(**(settings | changes))


def test_a_finished_run_started_again_keeps_its_held_out_metrics(tmp_path):
    first = train(objective(), blocks(), config(tmp_path), eval_blocks=blocks(8, seed=1))
    assert first.final_metrics
    again = train(objective(), blocks(), config(tmp_path), eval_blocks=blocks(8, seed=1))
    assert again.final_metrics == first.final_metrics


@pytest.mark.parametrize("field, value", [("lr", math.nan), ("lr", math.inf), ("lr", 0.0), ("steps", 0),
                                          ("warmup_steps", -1), ("min_lr_ratio", 1.5), ("grad_clip", math.nan),
                                          ("weight_decay", -0.1), ("batch_size", True)])
def test_settings_that_cannot_train_are_refused(tmp_path, field, value):
    with pytest.raises(ConfigurationError, match=field):
        config(tmp_path, **{field: value})


class BlowsUp(MedusaObjective):
    """A learning rate far too high, in effect: the loss turns NaN from ``at`` on."""

    at = 3

    def loss(self, module, batch, step):
        loss, parts = super().loss(module, batch, step)
        return (loss * math.nan if step >= self.at else loss), parts


def test_a_diverged_run_stops_before_saving_broken_weights_and_resumes_from_the_last_good_one(tmp_path):
    base = objective()
    diverging = BlowsUp(base.model, base.heads)
    with pytest.raises(TrainingDivergedError, match="step 3: the loss is nan.*step-00000002"):
        train(diverging, blocks(), config(tmp_path, steps=6))
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000002"
    assert all(torch.isfinite(p).all() for p in diverging.heads.parameters())
    assert not (tmp_path / "step-00000004").exists()
    # With the cause fixed, the run resumes from the good checkpoint and finishes.
    assert train(objective(), blocks(), config(tmp_path, steps=6)).steps == 6


def test_a_torn_log_line_and_a_checkpoint_without_its_step_do_not_stop_a_resume(tmp_path):
    train(objective(), blocks(), config(tmp_path, steps=4, checkpoint_every=1, log_every=1))
    with open(tmp_path / "log.jsonl", "a") as handle:
        handle.write('{"step": 5, "lo')  # the kill landed mid-write
    state = tmp_path / "step-00000004" / "state.json"
    meta = json.loads(state.read_text())
    del meta["step"]
    state.write_text(json.dumps(meta))  # and broke the latest checkpoint (its manifest no longer matches)
    with pytest.warns(UserWarning, match="step-00000004"):
        train(objective(), blocks(), config(tmp_path, steps=6, checkpoint_every=1, log_every=1))
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed from step 3: no torn line, no repeats


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path):
    train(objective(), blocks(), config(tmp_path, steps=4, checkpoint_every=2))
    weights = tmp_path / "step-00000004" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="Skipping the training checkpoint step-00000004"):
        result = train(objective(), blocks(), config(tmp_path, steps=4, checkpoint_every=2))
    assert result.steps == 4 and ckpt.latest_checkpoint(tmp_path).name == "step-00000004"
    for path in tmp_path.glob("step-*"):  # both damaged and intact copies gone or rewritten: all load now
        ckpt.verify_manifest(path, required=True)


def test_no_intact_checkpoint_is_a_clear_refusal(tmp_path):
    train(objective(), blocks(), config(tmp_path, steps=2, checkpoint_every=2))
    (tmp_path / "step-00000002" / "optimizer.safetensors").write_bytes(b"not safetensors")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="No intact training checkpoint.*--no-resume"):
        train(objective(), blocks(), config(tmp_path, steps=4))


@pytest.mark.parametrize("change, named", [({"lr": 2e-2}, "lr: 0.01 -> 0.02"), ({"batch_size": 4}, "batch_size"),
                                           ("data", "training data"), ("heads", "num_heads")])
def test_resuming_with_other_options_or_data_is_refused_not_mixed(tmp_path, change, named):
    train(objective(), blocks(), config(tmp_path), run={"num_heads": 2})
    data, run, settings = blocks(), {"num_heads": 2}, {}
    if change == "data":
        data = blocks(seed=7)
    elif change == "heads":
        run = {"num_heads": 3}
    else:
        settings = change
    with pytest.raises(ConfigurationError, match=f"{named}.*same options and data, or use a new --out"):
        train(objective(), data, config(tmp_path, steps=6, **settings), run=run)
    # Starting over on purpose is allowed.
    train(objective(), data, config(tmp_path, steps=2, **settings), run=run, resume=False)


def test_a_full_disk_is_a_typed_error_and_leaves_no_temporary_directory(tmp_path, monkeypatch):
    train(objective(), blocks(), config(tmp_path, steps=2, checkpoint_every=2))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(CheckpointError, match="No space left on device.*Free disk space"):
        train(objective(), blocks(), config(tmp_path, steps=4, checkpoint_every=2))
    assert not list(tmp_path.glob("*.tmp"))
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000002"


def test_fp16_on_the_cpu_is_refused_not_silently_ignored(tmp_path):
    with pytest.raises(ConfigurationError, match="fp16.*CUDA"):
        train(objective(), blocks(), config(tmp_path, mixed_precision="fp16"))


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_MEGATRON_LM"])
def test_deepspeed_and_megatron_configs_are_refused_naming_fsdp(tmp_path, monkeypatch, variable):
    from spec.errors import UnsupportedError

    monkeypatch.setenv(variable, "true")  # what `accelerate launch` sets for a DeepSpeed or Megatron-LM config
    with pytest.raises(UnsupportedError, match=f"{variable}.*use FSDP"):
        train(objective(), blocks(), config(tmp_path))
    assert not (tmp_path / "run.json").exists()


@pytest.mark.parametrize("how", ["env", "config"])
def test_fsdp_for_a_head_only_recipe_is_refused_not_silently_unsharded(tmp_path, monkeypatch, how):
    from spec.errors import UnsupportedError

    if how == "env":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    with pytest.raises(UnsupportedError, match="FSDP sharding is for training a base model.*MedusaObjective"):
        train(objective(), blocks(), config(tmp_path, sharding="fsdp" if how == "config" else "no"))
    assert not (tmp_path / "run.json").exists()


def medusa2_objective():
    from spec.training import Medusa2Objective

    model = tiny_model("llama", seed=0, vocab_size=VOCAB, dtype=torch.float32)
    return Medusa2Objective(model, MedusaDrafter.from_model(model, num_heads=2, num_layers=1).heads)


@pytest.mark.parametrize("variable, value, match", [("FSDP_VERSION", "1", "FSDP version 1.*FSDP2"),
                                                    ("FSDP_OFFLOAD_PARAMS", "true", "offload"),
                                                    ("FSDP_ACTIVATION_CHECKPOINTING", "true", "activation")])
def test_fsdp_options_spec_does_not_honour_are_refused(tmp_path, monkeypatch, variable, value, match):
    from spec.errors import UnsupportedError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv(variable, value)
    with pytest.raises(UnsupportedError, match=match):
        train(medusa2_objective(), blocks(), config(tmp_path))


def test_fsdp_groups_are_the_decoder_layers_and_heads_and_a_model_naming_no_layer_class_is_refused():
    from spec.errors import UnsupportedError

    objective = medusa2_objective()
    module = objective.trainable()
    assert objective.shard_units(module) == [*module["backbone"].model.layers, *module["heads"].heads]
    module["backbone"]._no_split_modules = None
    with pytest.raises(UnsupportedError, match="names no decoder layer class"):
        objective.shard_units(module)


@pytest.mark.parametrize("how", ["env", "config"])
def test_fsdp_in_one_process_says_how_to_start_several(tmp_path, monkeypatch, how):
    if how == "env":  # an accelerate FSDP config asks for it as --sharding fsdp does
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigurationError, match="accelerate launch.*torchrun"):
        train(medusa2_objective(), blocks(), config(tmp_path, sharding="fsdp" if how == "config" else "no"))


def test_an_unknown_sharding_and_a_batch_that_does_not_split_over_the_processes_are_refused(tmp_path):
    from spec.training.loop import _check_batch_splits

    with pytest.raises(ConfigurationError, match="sharding must be one of"):
        config(tmp_path, sharding="zero3")
    _check_batch_splits(4, 2)
    with pytest.raises(ConfigurationError, match="batch_size 5 does not split evenly over 2 processes"):
        _check_batch_splits(5, 2)


def test_training_text_that_is_not_utf8_is_refused_not_replaced(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes("def f():\n    return 'caf".encode() + b"\xe9'\n")  # latin-1, not UTF-8
    with pytest.raises(DataError, match="not UTF-8"):
        list(iter_texts(path))


# ---- self-distillation: the cached, batched, resumable generator ----------------------------------------------
def full_recompute(model, prompts, new_tokens, temperature, generator):
    """The reference: the whole sequence through the model again for every new token."""
    from spec.protocols import SamplingParams
    from spec.sampling import processed_logits

    seq = prompts.clone()
    for _ in range(new_tokens):
        logits = model(input_ids=seq).logits[:, -1].double()
        probs = processed_logits(logits, SamplingParams(temperature=temperature)).softmax(-1)
        seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return seq


@torch.no_grad()
def test_cached_continuation_draws_exactly_what_a_full_recompute_draws():
    from spec.training.distill import continue_batch
    from spec.protocols import SamplingParams

    model = tiny_model("llama", seed=0, vocab_size=VOCAB)  # float64: the two paths' probabilities agree exactly
    prompts = blocks(6, 4, seed=3)
    for temperature in (1.0, 0.7):
        ours = continue_batch(model, prompts, 12, SamplingParams(temperature=temperature),
                              torch.Generator().manual_seed(5))
        reference = full_recompute(model, prompts, 12, temperature, torch.Generator().manual_seed(5))
        assert torch.equal(ours, reference)


def test_self_distillation_resumes_after_a_kill_to_the_same_text(tmp_path, monkeypatch):
    from spec.training import distill

    model = tiny_model("llama", seed=0, vocab_size=VOCAB)
    prompts = blocks(10, 4, seed=2)
    whole = distill.generate_own_blocks(model, prompts, 6, seed=1, batch_size=4)
    real, calls = distill.continue_batch, []

    def killed_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "continue_batch", killed_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        distill.generate_own_blocks(model, prompts, 6, seed=1, batch_size=4, work_dir=tmp_path)
    monkeypatch.setattr(distill, "continue_batch", real)
    resumed = distill.generate_own_blocks(model, prompts, 6, seed=1, batch_size=4, work_dir=tmp_path)
    assert torch.equal(resumed, whole)
    assert len(list(tmp_path.glob("distill-*/batch-*.safetensors"))) == 3
