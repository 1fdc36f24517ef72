"""The contract every drafter keeps, checked once for all of them through the pipeline's own step.

Drafter-specific behaviour (what a head reads, early exits, caches) stays in each drafter's
test file; what every drafter must do, or every checkpointed drafter must refuse, is here.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from spec import (
    CloverDrafter,
    DraftContext,
    GreedyAcceptor,
    HydraDrafter,
    KangarooDrafter,
    MedusaDrafter,
    MergedDrafter,
    NGramDrafter,
    SamplingParams,
    StaticTreeBuilder,
)
from spec.bench.pairing import verifier_for
from spec.drafters.draft_vocab import DraftVocabulary
from spec.drafters.eagle import EagleDrafter
from spec.drafters.eagle3 import Eagle3Drafter
from spec.errors import CheckpointError, IncompatibleDrafterError, InputError, TreeTooDeepError
from spec.pipelines.step import DecodeState, Stages, prefill, speculative_step
from spec.testing.assertions import assert_same_tokens
from spec.trees import tree_from_choices

from drafter_checks import perturb
from helpers import model, prompt, reference

TREE = tree_from_choices([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]])  # depth 3
TOO_DEEP = tree_from_choices([[0], [0, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0]])


def _heads(cls, **options):
    def make(m, seed=0):
        drafter = cls.from_model(m, seed=seed, **options)
        perturb(drafter.heads, seed=seed)
        return drafter
    return make


def _eagle3(m, seed=0):
    # A reduced draft vocabulary, so its maps travel through checkpoints too.
    vocab = DraftVocabulary.from_counts(torch.arange(m.config.vocab_size).flip(0).double(), 64)
    drafter = Eagle3Drafter.from_model(m, max_depth=4, draft_vocab=vocab, seed=seed)
    perturb(drafter.heads, seed=seed)
    return drafter


def _kangaroo(m, seed=0):
    drafter = KangarooDrafter.from_model(m, exit_layer=1, threshold=0.0, max_depth=4, seed=seed)
    perturb(drafter.adapter, seed=seed)
    return drafter


#: name -> (make(model, seed) -> drafter, model overrides it needs).
HEAD_DRAFTERS = {
    "medusa": _heads(MedusaDrafter, num_heads=4),
    "hydra": _heads(HydraDrafter, num_heads=4),
    "hydra++": _heads(HydraDrafter, num_heads=4, prefix_layer=True, num_layers=2),
    "clover": _heads(CloverDrafter, num_heads=4),
    "eagle": _heads(EagleDrafter, max_depth=4),
    "eagle3": _eagle3,
}
CHECKPOINTED = HEAD_DRAFTERS | {"kangaroo": _kangaroo}
ALL = CHECKPOINTED | {
    "ngram": lambda m, seed=0: NGramDrafter(max_depth=4),
    "merged": lambda m, seed=0: MergedDrafter([NGramDrafter(max_depth=4), _heads(MedusaDrafter, num_heads=4)(m, seed)]),
}


def stages_for(m, drafter) -> Stages:
    verifier = verifier_for(m, drafter)  # its own (Kangaroo), or one reporting the features it reads (EAGLE-3)
    return Stages(drafter, StaticTreeBuilder(TREE), verifier, GreedyAcceptor())


def drafts_equal(a, b) -> bool:
    same = a.tree == b.tree and torch.equal(a.tokens, b.tokens)
    if a.log_confidence is not None or b.log_confidence is not None:
        same = same and torch.equal(a.log_confidence, b.log_confidence)
    return same


@pytest.mark.parametrize("name", list(ALL))
def test_every_step_keeps_the_contract_and_greedy_equals_the_model(name):
    """Through ``speculative_step``: each draft is rooted at the context's last token, fits the requested
    tree, has a kind and confidences as the traits declare; greedy output is the model's own."""
    m = model("llama")
    drafter = ALL[name](m)
    stages = stages_for(m, drafter)
    p = prompt(12, seed=2)
    new_tokens = 40
    state = DecodeState.start(p[0], new_tokens)
    prefill(drafter, stages.verifier, state.sequence)
    while state.num_generated < new_tokens:
        root = int(state.sequence[-1])
        step = speculative_step(stages, state, SamplingParams(), None, budget=new_tokens - state.num_generated)
        draft = step.draft
        assert int(draft.tokens[0]) == root
        assert draft.tree.max_depth <= TREE.max_depth and draft.tree.num_nodes <= TREE.num_nodes
        assert draft.kind in drafter.traits.candidate_kinds
        assert (draft.log_confidence is not None) >= drafter.traits.log_confidence
        state.extend(list(step.acceptance.new_tokens))
    assert_same_tokens(state.sequence[None], reference("llama", p, new_tokens))


@pytest.mark.parametrize("name", list(ALL))
def test_a_tree_deeper_than_the_drafter_is_refused_or_cut_to_its_depth(name):
    m = model("llama")
    drafter = ALL[name](m)
    assert drafter.max_depth < TOO_DEEP.max_depth
    tokens = torch.tensor([5, 6, 7, 5, 6, 7, 5, 6])  # repeats, so lookup drafters find something to propose
    prefill(drafter, stages_for(m, drafter).verifier, tokens)
    try:
        draft = drafter.propose(TOO_DEEP, DraftContext(tokens=tokens), SamplingParams())
    except TreeTooDeepError as error:
        assert str(drafter.max_depth) in str(error)
    else:
        assert 1 <= draft.tree.max_depth <= drafter.max_depth


@pytest.mark.parametrize("name", list(CHECKPOINTED))
def test_save_load_round_trip_is_bit_identical(name, tmp_path):
    m = model("llama")
    drafter = CHECKPOINTED[name](m, seed=3)
    drafter.save_pretrained(tmp_path)
    loaded = type(drafter).from_pretrained(tmp_path, m)
    module = "adapter" if name == "kangaroo" else "heads"
    saved, restored = getattr(drafter, module).state_dict(), getattr(loaded, module).state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["drafter_type"] == drafter.drafter_type
    if hasattr(drafter, "hyperparameters"):
        assert config["hyperparameters"] == drafter.hyperparameters()
    drafts = []
    for d in (drafter, loaded):
        verifier = verifier_for(m, d)
        tokens = prompt(9, seed=4)[0]
        prefill(d, verifier, tokens)
        drafts.append(d.propose(TREE, DraftContext(tokens=tokens), SamplingParams()))
    assert drafts_equal(*drafts)


@pytest.mark.parametrize("name", list(CHECKPOINTED))
def test_loading_onto_another_model_is_refused(name, tmp_path):
    make = CHECKPOINTED[name]
    drafter = make(model("llama"))
    cls = type(drafter)
    drafter.save_pretrained(tmp_path)
    with pytest.raises(IncompatibleDrafterError, match="weights differ"):
        cls.from_pretrained(tmp_path, model("llama", seed=1))
    with pytest.raises(IncompatibleDrafterError, match="vocabulary"):
        cls.from_pretrained(tmp_path, model("llama", vocab_size=128))
    with pytest.raises(IncompatibleDrafterError, match="hidden"):
        cls.from_pretrained(tmp_path, model("llama", hidden_size=48))
    other = MedusaDrafter if cls is not MedusaDrafter else HydraDrafter
    with pytest.raises(CheckpointError, match=f"holds a '{drafter.drafter_type}' drafter"):
        other.from_pretrained(tmp_path, model("llama"))
    # The same weights in another dtype are the same model.
    cls.from_pretrained(tmp_path, copy.deepcopy(model("llama")).to(torch.float32))


@pytest.mark.parametrize("name", list(HEAD_DRAFTERS))
def test_heads_built_for_another_model_are_refused(name):
    heads = HEAD_DRAFTERS[name](model("llama")).heads
    cls = type(HEAD_DRAFTERS[name](model("llama")))
    with pytest.raises(IncompatibleDrafterError, match="hidden"):
        cls(model("llama", hidden_size=48), heads)
    if hasattr(heads, "vocab"):  # heads with their own vocabulary projection
        with pytest.raises(IncompatibleDrafterError, match="vocabulary"):
            cls(model("llama", vocab_size=128), heads)


@pytest.mark.parametrize("name", list(HEAD_DRAFTERS))
def test_the_root_alone_when_there_is_nothing_to_draft_from_and_commit_is_required(name):
    m = model("llama")
    drafter = HEAD_DRAFTERS[name](m)
    drafter.reset()
    root_only = drafter.propose(TREE, DraftContext(tokens=torch.tensor([7])), SamplingParams())
    assert root_only.tokens.tolist() == [7] and root_only.tree.num_nodes == 1
    with pytest.raises(InputError, match="call drafter.commit"):  # the verifier cached tokens the drafter never saw
        drafter.propose(TREE, DraftContext(tokens=prompt(5, seed=1)[0]), SamplingParams())
