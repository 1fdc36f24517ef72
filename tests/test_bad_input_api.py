"""Bad input at the Python API where only the command line used to check it."""

import json

import pytest
import torch

from spec.bench.methods import DecoderMethod
from spec.bench.runner import run_benchmark
from spec.errors import CheckpointError, ConfigurationError, IntegrityError, SamplingParamsError
from spec.pipelines import AutoregressiveDecoder
from spec.protocols import SamplingParams
from spec.training.checkpoint import latest_checkpoint, load_training_checkpoint, save_training_checkpoint
from spec.trees import AcceptanceStats, choose_tree_for_hardware, greedy_tree, optimal_tree

from helpers import model

STATS = AcceptanceStats(probs=((0.5, 0.2), (0.4, 0.1)))


def test_acceptance_stats_load_checks_every_field(tmp_path):
    path = tmp_path / "stats.json"
    STATS.save(path)
    assert AcceptanceStats.load(path).probs == STATS.probs
    data = json.loads(path.read_text())
    for field, value in (("probs", [["a"]]), ("samples", -1), ("drafter", 3)):
        path.write_text(json.dumps({**data, field: value}))
        with pytest.raises(ConfigurationError, match=field):
            AcceptanceStats.load(path)


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_tree_depth_zero_or_bad_is_refused_not_default(depth):
    for make in (lambda: optimal_tree(STATS, 2, depth), lambda: greedy_tree(STATS, 2, depth),
                 lambda: choose_tree_for_hardware(STATS, {1: 0.01, 8: 0.02}, max_depth=depth)):
        with pytest.raises(ConfigurationError, match="max_depth must be"):
            make()
    assert optimal_tree(STATS, 2, None).tree.max_depth <= 2


@pytest.mark.parametrize("costs", [{1: 0.0, 8: 0.02}, {1: float("nan")}, {}, {1: -1.0}])
def test_cost_curves_must_be_measured_seconds(costs):
    with pytest.raises(ConfigurationError, match="finite and > 0"):
        choose_tree_for_hardware(STATS, costs)
    with pytest.raises(ConfigurationError, match="draft_costs"):
        choose_tree_for_hardware(STATS, {1: 0.01}, draft_costs={1: -0.1})
    choose_tree_for_hardware(STATS, {1: 0.01, 8: 0.02}, draft_costs={1: 0.0, 2: 0.0})  # free drafting is fine


@pytest.mark.parametrize("kwargs, word", [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"),
                                          ({"max_new_tokens": 0}, "max_new_tokens"), ({"baseline": "x"}, "baseline")])
def test_run_benchmark_refuses_bad_settings_before_running(kwargs, word):
    method = DecoderMethod("ar", AutoregressiveDecoder(model("llama")))
    args = {"max_new_tokens": 4} | kwargs
    with pytest.raises(ConfigurationError, match=word):
        run_benchmark([method], [torch.tensor([[1, 2, 3]])], **args)
    with pytest.raises(ConfigurationError, match="at least one"):
        run_benchmark([method], [], 4)


@pytest.mark.parametrize("kwargs", [{"temperature": True}, {"top_p": True}, {"seed": 2**70}, {"seed": 2**64}, {"seed": -1}])
def test_sampling_params_refuse_bools_and_out_of_range_seeds(kwargs):
    with pytest.raises(SamplingParamsError):
        SamplingParams(**kwargs)


def _checkpoint(tmp_path):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    path = save_training_checkpoint(tmp_path, 7, {"w": param.detach()}, optimizer, None, {"note": "x"})
    return path, optimizer


def test_training_checkpoints_carry_a_checksum_that_is_verified(tmp_path):
    path, optimizer = _checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path) == path
    step, weights, state = load_training_checkpoint(path, optimizer, None)
    assert step == 7 and torch.equal(weights["w"], torch.ones(3)) and state == {"note": "x"}
    data = bytearray((path / "weights.safetensors").read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the tensor data
    (path / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        load_training_checkpoint(path, optimizer, None)


@pytest.mark.parametrize("pointer", ["../elsewhere", "/etc", "a/../../b"])
def test_latest_pointer_never_leaves_the_run_directory(tmp_path, pointer):
    _checkpoint(tmp_path)
    (tmp_path / "latest").write_text(pointer)
    with pytest.raises(CheckpointError):
        latest_checkpoint(tmp_path)
