"""Host<-device conversions and uploads per stage for the other acceptors and for Kangaroo (issue 24, item 3).

``tests/test_gpu_readiness.py`` budgets the default Medusa + greedy step; this holds the sampling acceptors, typical
acceptance and the Kangaroo self-drafter to theirs. Counts are per step after a warm-up, on the CPU (where
``tests/sync_counter.py`` bounds the CUDA synchronisations from above: host-only conversions count too), with seeded
coins, so they are exact and a test fails on one more read. docs/architecture.md tabulates them.

The sequential acceptors read once per coin by design: ``Randomness.bernoulli`` takes the probability as a host
float (the exact tests enumerate the coins through it), and on CUDA the pipeline's generator lives on the GPU, so
the coin's comparison is a read too. What is budgeted away is everything else: uploads of index tensors, the
residual's normalisation tested on the host, two reads where one does.
"""

import pytest
import torch

from spec import (BlockVerificationAcceptor, GreedyAcceptor, KangarooDrafter, MedusaDrafter,
                  RejectionSamplingAcceptor, SamplingParams, StaticTreeBuilder, TraversalVerificationAcceptor,
                  TypicalAcceptor, make_verifier)
from spec.pipelines.step import Stages
from spec.trees import chain_tree

from helpers import model, prompt
from sync_counter import count_steps

TREE = [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]
HOT = SamplingParams(temperature=0.8, seed=0)
STEPS = 20

# Per step (conversions, uploads) of the acceptor, measured with these seeds; before issue 24's item 3 in brackets.
# Their make-up: rejection = 1 finiteness read (spec.sampling.check_finite, both checks at once) + 1 tokens + 1 bonus
# draw + per tried candidate its probability and its coin (2 a step here); traversal = 1 + 1 + 1 + one ratio read
# per child entered, one coin per node tested and the residual's mass per rejection (6 of each a step here);
# block = 1 + 1 + 1 + one ratio read per chain node (3) + per stop tried its coin and residual mass;
# typical = 1 + 1 decision read + 1 draw.
ACCEPTOR_BUDGET = {
    "rejection": (7, 0),  # (10, 2): index_fill's index uploaded per rejection, the residual's sum tested on the host
    "traversal": (21, 0),  # (34, 12): also point masses built from uploaded indices, two reads per ratio
    "block": (11, 0),  # (16, 3)
    "typical": (3, 0),  # (7, 1): the path read three times, tokens gathered with a Python list
}


def acceptor_stages(name: str):
    m = model("llama")
    medusa = MedusaDrafter.from_model(m, num_heads=3, seed=0)
    if name == "block":
        return Stages(medusa, StaticTreeBuilder(chain_tree(3)), make_verifier(m), BlockVerificationAcceptor())
    acceptor = {"rejection": RejectionSamplingAcceptor(), "traversal": TraversalVerificationAcceptor(),
                "typical": TypicalAcceptor()}[name]
    return Stages(medusa, StaticTreeBuilder.from_choices(TREE), make_verifier(m), acceptor)


@pytest.mark.parametrize("name", sorted(ACCEPTOR_BUDGET))
def test_acceptor_syncs_per_step_stay_within_budget(name):
    conversions, uploads = count_steps(acceptor_stages(name), prompt(8, seed=0)[0], HOT, steps=STEPS)
    max_conversions, max_uploads = ACCEPTOR_BUDGET[name]
    assert conversions["acceptor.accept"] <= max_conversions, conversions
    assert uploads.get("acceptor.accept", 0) <= max_uploads, uploads
    # The rest of the step is the default pipeline's (tests/test_gpu_readiness.py): the root read and uploaded.
    assert conversions.get("verifier.verify", 0) == conversions.get("verifier.commit", 0) == 0, conversions


def test_the_sequential_acceptors_read_once_per_coin_beyond_a_fixed_few(monkeypatch):
    """The budgets' make-up for rejection sampling: 3 fixed reads, then two per coin (its probability, its draw)."""
    from spec.randomness import TorchRandomness

    coins = []
    real = TorchRandomness.bernoulli
    monkeypatch.setattr(TorchRandomness, "bernoulli", lambda self, p: coins.append(p) or real(self, p))
    conversions, _ = count_steps(acceptor_stages("rejection"), prompt(8, seed=0)[0], HOT, steps=STEPS)
    coins_per_step = len(coins) / (STEPS + 4)  # the warm-up steps draw too
    assert coins_per_step > 1
    assert conversions["acceptor.accept"] <= 3 + 2 * coins_per_step + 0.5, (conversions, coins_per_step)


# Kangaroo, threshold 0 (every node extended), a 7-node tree of depth 3: three levels drafted after the root.
KANGAROO_BUDGET = {
    # conversions, uploads
    "drafter.propose": (4, 7),  # a read a level (3) + the root from the host buffer; one packed upload per drafted
    #                             level (4) + the draft's tokens, confidences and subtree depths built on the host
    #                             (was 24 reads: 3 per node and 1 a level; 22 uploads: a list-indexed row per node,
    #                             3 a level, 3 on the host)
    "verifier.verify": (1, 0),  # the draft's cache rows checked in one read (was 3: min, max, and the tree's depth)
    "verifier.commit": (0, 0.2),  # the path's index tensor the first time it is accepted (was 1 a step)
    "acceptor.accept": (1, 0),
    "drafter.commit": (0, 0),
    "step": (0, 0.2),
    "state.extend": (0, 1),
}


def test_kangaroo_syncs_per_step_stay_within_budget():
    m = model("llama")
    drafter = KangarooDrafter.from_model(m, exit_layer=1, threshold=0.0, max_depth=3, seed=0)
    stages = Stages(drafter, StaticTreeBuilder.from_choices(TREE), drafter.verifier, GreedyAcceptor())
    conversions, uploads = count_steps(stages, prompt(8, seed=0)[0], SamplingParams(), steps=STEPS)
    assert set(conversions) | set(uploads) <= set(KANGAROO_BUDGET), (conversions, uploads)
    for stage, (max_conversions, max_uploads) in KANGAROO_BUDGET.items():
        assert conversions.get(stage, 0) <= max_conversions, (stage, conversions)
        assert uploads.get(stage, 0) <= max_uploads, (stage, uploads)
    assert conversions["drafter.propose"] >= 3  # one read per drafted level: the counter sees them
