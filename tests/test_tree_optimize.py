"""Tree optimisation: the DP is optimal (brute force), greedy matches it on monotone tables,
predictions match simulation, and optimised or dynamic trees keep greedy output exact."""

import json
import math
import random

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import (
    GreedyAcceptor,
    HydraDrafter,
    MedusaDrafter,
    SpeculativeDecoder,
    StaticTreeBuilder,
    TreeAttentionVerifier,
)
from spec.errors import ConfigurationError, InvalidTreeError, ShapeError, TreeTooDeepError
from spec.protocols import CandidateTree, Draft
from spec.testing.assertions import assert_same_tokens
from spec.bench import measure_acceptance
from spec.testing.drafters import OracleDrafter
from spec.testing.strategies import candidate_trees
from spec.trees import (
    AcceptanceStats,
    DynamicTreeBuilder,
    choose_tree_for_hardware,
    draw_tree,
    expected_accepted_length,
    full_tree,
    greedy_tree,
    load_tree,
    optimal_tree,
    save_tree,
    tree_from_choices,
    tree_from_graph,
    tree_from_json,
    tree_to_choices,
    tree_to_graph,
    tree_to_json,
)

from helpers import VOCAB, model, prompt, reference


@st.composite
def tables(draw, monotone=None, max_depth=3, max_width=3):
    """Acceptance tables whose rows sum to at most 1; optionally non-increasing along rank and depth."""
    depth = draw(st.integers(1, max_depth))
    width = draw(st.integers(1, max_width))
    monotone = draw(st.booleans()) if monotone is None else monotone
    rows = []
    for _ in range(depth):
        raw = [draw(st.floats(0.0, 1.0)) for _ in range(width + 1)]
        total = sum(raw) or 1.0
        row = [x / total for x in raw[:width]]
        rows.append(sorted(row, reverse=True) if monotone else row)
    if monotone:  # also non-increasing along depth, rank by rank
        for d in range(1, depth):
            rows[d] = [min(a, b) for a, b in zip(rows[d], rows[d - 1])]
    return AcceptanceStats(probs=rows)


def all_trees(width: int, depth: int, size: int):
    """Every tree with exactly ``size`` candidates, depth <= ``depth``, ranks < ``width`` (as choices)."""
    nodes = [()]
    frontier = [()]
    for _ in range(depth):
        frontier = [p + (r,) for p in frontier for r in range(width)]
        nodes.extend(frontier)
    nodes = nodes[1:]

    def rec(i, chosen, left):
        if left == 0:
            yield list(chosen)
            return
        if len(nodes) - i < left:
            return
        path = nodes[i]
        if len(path) == 1 or path[:-1] in chosen:
            chosen.add(path)
            yield from rec(i + 1, chosen, left - 1)
            chosen.remove(path)
        yield from rec(i + 1, chosen, left)

    for choice_set in rec(0, set(), size):
        yield tree_from_choices([list(p) for p in choice_set])


@given(stats=tables(), budget=st.integers(1, 5))
@settings(max_examples=30)
def test_dp_equals_brute_force_and_beats_greedy_and_random(stats, budget):
    capacity = sum(stats.width ** d for d in range(1, stats.depth + 1))
    if budget > capacity:
        with pytest.raises(ConfigurationError, match="does not fit"):
            optimal_tree(stats, budget)
        return
    result = optimal_tree(stats, budget)
    assert result.tree.num_nodes == budget + 1 and result.tree.max_depth <= stats.depth
    assert result.expected_length == pytest.approx(expected_accepted_length(result.tree, stats), abs=1e-12)
    brute = max(expected_accepted_length(t, stats) for t in all_trees(stats.width, stats.depth, budget))
    assert result.expected_length == pytest.approx(brute, abs=1e-12)
    greedy = greedy_tree(stats, budget)
    assert greedy.num_nodes == budget + 1
    assert result.expected_length >= expected_accepted_length(greedy, stats) - 1e-12
    rng = random.Random(budget)
    candidates = list(all_trees(stats.width, stats.depth, budget))
    for tree in rng.sample(candidates, k=min(5, len(candidates))):
        assert result.expected_length >= expected_accepted_length(tree, stats) - 1e-12
    assert all(a <= b + 1e-12 for a, b in zip(result.curve, result.curve[1:]))  # more nodes never hurt


@given(stats=tables(monotone=True, max_depth=4, max_width=4), budget=st.integers(1, 12))
def test_greedy_equals_dp_on_monotone_tables(stats, budget):
    capacity = sum(stats.width ** d for d in range(1, stats.depth + 1))
    budget = min(budget, capacity)
    assert expected_accepted_length(greedy_tree(stats, budget), stats) == pytest.approx(
        optimal_tree(stats, budget).expected_length, abs=1e-12)


@given(stats=tables(monotone=False, max_depth=3, max_width=3), budget=st.integers(1, 8))
def test_greedy_is_optimal_under_this_acceptance_model_even_unordered(stats, budget):
    """Each node's path probability is at most its parent's (p <= 1), so the ``budget`` largest ones
    always form a subtree and greedy is optimal for any table; the DP adds the exact curve."""
    budget = min(budget, sum(stats.width ** d for d in range(1, stats.depth + 1)))
    assert expected_accepted_length(greedy_tree(stats, budget), stats) == pytest.approx(
        optimal_tree(stats, budget).expected_length, abs=1e-12)


@given(tree=candidate_trees(max_nodes=20, max_depth=4, max_width=4), meta=st.dictionaries(st.text(max_size=5), st.integers()))
def test_json_and_graph_round_trips(tree, meta):
    again, metadata = tree_from_json(tree_to_json(tree, meta))
    assert again == tree and metadata == meta
    assert tree_from_graph(tree_to_graph(tree)) == tree
    assert tree_from_json(json.dumps(tree_to_choices(tree)))[0] == tree  # Medusa's bare format


def simulate(tree: CandidateTree, stats: AcceptanceStats, steps: int, seed: int) -> list[int]:
    """The synthetic acceptance model: at an accepted node, the target picks rank r with probability
    p(depth, r) (or none of the drafted ranks); the step gains accepted nodes + 1."""
    rng = random.Random(seed)
    gains = []
    for _ in range(steps):
        node, gained = 0, 1
        while tree.children[node]:
            depth = tree.depth_list[node] + 1
            u, chosen_rank, acc = rng.random(), None, 0.0
            for rank in range(stats.width):
                acc += stats.prob(depth, rank)
                if u < acc:
                    chosen_rank = rank
                    break
            child = next((c for c in tree.children[node] if tree.ranks[c] == chosen_rank), None)
            if child is None:
                break
            node, gained = child, gained + 1
        gains.append(gained)
    return gains


@given(stats=tables(max_depth=4, max_width=3), budget=st.integers(1, 10), seed=st.integers(0, 1000))
@settings(max_examples=10)
def test_predicted_length_matches_simulation(stats, budget, seed):
    """|mean - prediction| < 5 standard errors: false-alarm rate 6e-7 per example (seeds fixed)."""
    budget = min(budget, sum(stats.width ** d for d in range(1, stats.depth + 1)))
    result = optimal_tree(stats, budget)
    gains = simulate(result.tree, stats, 4000, seed)
    mean = sum(gains) / len(gains)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / (len(gains) - 1))
    # The 1e-3 slack covers degenerate tables (p ~ 0 or 1) where the sample variance is ~0.
    assert abs(mean - result.expected_length) <= 5 * sd / math.sqrt(len(gains)) + 1e-3


def test_hardware_sizing_follows_the_cost_curve():
    stats = AcceptanceStats(probs=[[0.7, 0.2], [0.6, 0.2], [0.5, 0.2]])
    flat = choose_tree_for_hardware(stats, {1: 1.0, 64: 1.0}, max_budget=12)  # a GPU: tokens are free
    steep = choose_tree_for_hardware(stats, {1: 1.0, 2: 2.0, 64: 64.0}, max_budget=12)  # cost per token
    assert flat.budget == 12 and flat.depth == 3
    assert steep.budget == 1
    assert steep.tokens_per_second == pytest.approx(max(row[3] for row in steep.table))
    costed = choose_tree_for_hardware(stats, {1: 1.0, 64: 1.0}, draft_costs={1: 0.0, 2: 0.0, 3: 10.0}, max_budget=12)
    assert costed.depth <= 2  # drafting depth 3 is too dear


def test_bad_tables_budgets_and_graphs_are_refused():
    with pytest.raises(ConfigurationError, match=r"must be in \[0, 1\]"):
        AcceptanceStats(probs=[[1.2]])
    with pytest.raises(ConfigurationError, match=r"must be in \[0, 1\]"):
        AcceptanceStats(probs=[[-0.1]])
    with pytest.raises(ConfigurationError, match="sum to"):
        AcceptanceStats(probs=[[0.7, 0.6]])
    with pytest.raises(ConfigurationError, match="rows must match"):
        AcceptanceStats(probs=[[0.5], [0.2, 0.1]])
    stats = AcceptanceStats(probs=[[0.5, 0.2]])
    for bad in (0, -3):
        with pytest.raises(ConfigurationError, match="budget"):
            optimal_tree(stats, bad)
        with pytest.raises(ConfigurationError, match="budget"):
            greedy_tree(stats, bad)
    cyclic = nx.DiGraph([(0, 1), (1, 2), (2, 1)])
    with pytest.raises(InvalidTreeError, match="cycle"):
        tree_from_graph(cyclic)
    two_roots = nx.DiGraph([(0, 1), (2, 3)])
    nx.set_node_attributes(two_roots, 0, "rank")
    with pytest.raises(InvalidTreeError, match="one root"):
        tree_from_graph(two_roots)
    m = model("llama")
    deep = StaticTreeBuilder(optimal_tree(AcceptanceStats(probs=[[0.9]] * 5), 5).tree)
    with pytest.raises(TreeTooDeepError):
        SpeculativeDecoder(m, MedusaDrafter.from_model(m, num_heads=3), deep, TreeAttentionVerifier(m), GreedyAcceptor())


def test_measured_stats_optimised_tree_keeps_greedy_output(tmp_path):
    m = model("qwen2")
    p = prompt(6, seed=4)
    ref = reference("qwen2", p, 72)
    oracle = OracleDrafter(ref, VOCAB, accuracy=0.8, max_depth=3, seed=2)
    stats = measure_acceptance(m, oracle, TreeAttentionVerifier(m), [p], depth=3, width=2, max_new_tokens=40)
    assert stats.depth == 3 and stats.width == 2 and stats.samples > 0
    assert 0.3 < sum(stats.probs[0]) <= 1.0  # the oracle is right 80% of the time, on one of two ranks
    stats.save(tmp_path / "stats.json")
    assert AcceptanceStats.load(tmp_path / "stats.json") == stats
    tree = optimal_tree(stats, 6, 3).tree
    save_tree(tmp_path / "tree.json", tree, {"expected_length": expected_accepted_length(tree, stats)})
    loaded, meta = load_tree(tmp_path / "tree.json")
    assert loaded == tree and meta["expected_length"] > 1
    draw_tree(tree, tmp_path / "tree.png", stats)
    assert (tmp_path / "tree.png").stat().st_size > 1000
    decoder = SpeculativeDecoder(m, OracleDrafter(ref, VOCAB, accuracy=0.8, max_depth=3, seed=5), StaticTreeBuilder(tree),
                                 TreeAttentionVerifier(m), GreedyAcceptor())
    assert_same_tokens(decoder.generate(p, max_new_tokens=64).sequences, ref[:, : p.shape[1] + 64])


@pytest.mark.parametrize("drafter_name", ["medusa", "hydra"])
@given(total=st.integers(1, 12), seed=st.integers(0, 100))
@settings(max_examples=4)
def test_dynamic_trees_keep_greedy_output(drafter_name, total, seed):
    m = model("llama")
    p = prompt(5, seed=seed)
    if drafter_name == "medusa":
        drafter = MedusaDrafter.from_model(m, num_heads=3, seed=seed)
    else:
        drafter = HydraDrafter.from_model(m, num_heads=3, seed=seed)
    with torch.no_grad():
        for param in drafter.heads.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    builder = DynamicTreeBuilder(depth=3, width=3, total_tokens=total)
    decoder = SpeculativeDecoder(m, drafter, builder, TreeAttentionVerifier(m), GreedyAcceptor())
    out = decoder.generate(p, max_new_tokens=48)
    assert_same_tokens(out.sequences, reference("llama", p, 48))
    assert max(s.tree_size for s in out.steps) <= total + 1


def test_dynamic_selection_keeps_the_most_confident_subtree():
    tree = full_tree(2, 2)  # root, 2 children, 4 grandchildren
    conf = torch.tensor([0.0, -0.1, -2.0, -0.3, -0.2, -3.0, -2.5])
    draft = Draft(tree=tree, tokens=torch.arange(7), log_confidence=conf)
    kept = DynamicTreeBuilder(depth=2, width=2, total_tokens=3).select(draft)
    assert kept.tokens.tolist() == [0, 1, 3, 4]  # node 1 and its two children beat node 2
    with pytest.raises(ShapeError, match="log_confidence"):
        DynamicTreeBuilder(depth=2, width=2, total_tokens=3).select(Draft(tree=tree, tokens=torch.arange(7)))


def test_spec_tree_cli(tmp_path, capsys):
    from spec.apps.cli import main

    stats = AcceptanceStats(probs=[[0.6, 0.2, 0.1], [0.5, 0.2, 0.1], [0.4, 0.2, 0.1]], drafter="test")
    stats.save(tmp_path / "stats.json")
    assert main(["tree", "optimise", "--stats", str(tmp_path / "stats.json"), "--budget", "8", "--depth", "3",
                 "--out", str(tmp_path / "tree.json"), "--png", str(tmp_path / "tree.png")]) == 0
    tree, meta = load_tree(tmp_path / "tree.json")
    assert tree.num_nodes == 9 and meta["expected_length"] == pytest.approx(optimal_tree(stats, 8, 3).expected_length)
    (tmp_path / "curve.json").write_text(json.dumps({"1": 1.0, "4": 1.1, "16": 3.0}))
    assert main(["tree", "optimise", "--stats", str(tmp_path / "stats.json"), "--budget", "15",
                 "--cost-curve", str(tmp_path / "curve.json"), "--out", str(tmp_path / "hw.json")]) == 0
    assert load_tree(tmp_path / "hw.json")[1]["predicted_tokens_per_second"] > 0
    assert main(["tree", "show", str(tmp_path / "tree.json"), "--stats", str(tmp_path / "stats.json"),
                 "--png", str(tmp_path / "again.png")]) == 0
    out = capsys.readouterr().out
    assert "expected accepted length" in out and (tmp_path / "again.png").exists()
