"""Compute an acceptor's output distribution exactly, by enumerating its random choices.

An acceptor (or a sampling drafter) draws through ``spec.randomness.Randomness``.
:func:`enumerate_outcomes` runs a function again and again with a scripted
``Randomness`` that takes each possible outcome of each draw in turn, and returns
every distinct run with its probability. With a tiny vocabulary and a small tree
that is a few thousand runs: exact distributions, no sampling error.

:func:`lossless_gap` uses it to state losslessness of an acceptor's rule directly:
the tokens one step emits, continued with the target's own sampler up to a fixed
length, must be distributed exactly as that many tokens sampled from the target.
:func:`composition_gap` states the same of composed stages: a real drafter, tree
builder and acceptor, every random draw of each enumerated.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from spec.drafters.sampled import draw_siblings
from spec.protocols import CandidateKind, CandidateTree, Draft, DraftContext, SamplingParams, Verification
from spec.sampling import target_probs

Prefix = tuple[int, ...]


class _ScriptedRandomness:
    """Replays ``script`` (chosen outcome per draw), then takes the first outcome of new draws."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.taken: list[int] = []
        self.options: list[int] = []  # number of possible outcomes of each draw
        self.weight = 1.0

    def _choose(self, outcomes: list[tuple[Any, float]]) -> Any:
        k = len(self.taken)
        pick = self.script[k] if k < len(self.script) else 0
        self.taken.append(pick)
        self.options.append(len(outcomes))
        value, prob = outcomes[pick]
        self.weight *= prob
        return value

    def bernoulli(self, probability: float) -> bool:
        probability = min(max(float(probability), 0.0), 1.0)
        outcomes = [(v, p) for v, p in ((True, probability), (False, 1.0 - probability)) if p > 0]
        return self._choose(outcomes)

    def categorical(self, weights: torch.Tensor) -> int:
        w = weights.double()
        total = float(w.sum())
        if not total > 0:
            raise ValueError("categorical() got weights that sum to 0: the distribution is not a distribution.")
        return self._choose([(i, float(w[i]) / total) for i in torch.nonzero(w > 0).flatten().tolist()])


def enumerate_outcomes(run: Callable[[Any], Any]) -> list[tuple[float, Any]]:
    """Every outcome of ``run(randomness)`` with its probability (probabilities sum to 1)."""
    results = []
    stack: list[list[int]] = [[]]
    while stack:
        script = stack.pop()
        rnd = _ScriptedRandomness(script)
        result = run(rnd)
        for k in range(len(script), len(rnd.taken)):
            for alternative in range(1, rnd.options[k]):
                stack.append(rnd.taken[:k] + [alternative])
        results.append((rnd.weight, result))
    return results


def draft_outcomes(tree: CandidateTree, root: int, kind: CandidateKind, fixed_tokens: Optional[list[int]],
                   q_fn: Callable[[Prefix], torch.Tensor], randomness) -> Draft:
    """A draft over ``tree``: the given tokens (deterministic), or children drawn from ``q_fn(path)``
    with the drafters' own sibling draw (:func:`spec.drafters.sampled.draw_siblings`)."""
    if kind is CandidateKind.DETERMINISTIC:
        return Draft(tree=tree, tokens=torch.tensor([root] + list(fixed_tokens)))
    vocab = q_fn(()).shape[0]
    # Parents precede children, so each row's path tokens are known when it is needed.
    tokens = [root] + [-1] * (tree.num_nodes - 1)
    node_q = torch.zeros(tree.num_nodes, vocab, dtype=torch.float64)
    for parent, children in enumerate(tree.children):
        if not children:
            continue
        q = q_fn(tuple(tokens[i] for i in tree.path_to(parent)[1:]))
        drawn = draw_siblings(q, len(children), kind, randomness)
        if None in drawn:
            raise ValueError("q has fewer tokens than a node has children; give q full support in exact tests.")
        for child, token in zip(children, drawn):
            tokens[child] = token
            node_q[child] = q
    return Draft(tree=tree, tokens=torch.tensor(tokens), kind=kind, draft_probs=node_q)


def continuation_gap(emitted: dict[Prefix, float], p_fn: Callable[[Prefix], torch.Tensor], length: int) -> float:
    """Largest absolute difference between ``emitted`` (a distribution over what one step emits), each
    prefix continued with the target's own sampler ``p_fn`` to ``length`` tokens, and ``length`` tokens
    sampled from the target. 0 (up to rounding) means the step is lossless."""
    vocab = p_fn(()).shape[0]

    def continue_with_target(prefix: Prefix) -> dict[Prefix, float]:
        dist = {prefix[:length]: 1.0}
        while len(next(iter(dist))) < length:
            grown: dict[Prefix, float] = {}
            for seq, w in dist.items():
                p = p_fn(seq)
                for token in range(vocab):
                    if p[token] > 0:
                        grown[seq + (token,)] = grown.get(seq + (token,), 0.0) + w * float(p[token])
            dist = grown
        return dist

    produced: dict[Prefix, float] = {}
    for prefix, weight in emitted.items():
        for seq, w in continue_with_target(prefix).items():
            produced[seq] = produced.get(seq, 0.0) + weight * w
    target = continue_with_target(())
    keys = set(produced) | set(target)
    return max(abs(produced.get(k, 0.0) - target.get(k, 0.0)) for k in keys)


def _distribution(run: Callable[[Any], Prefix]) -> dict[Prefix, float]:
    emitted: dict[Prefix, float] = {}
    for weight, tokens in enumerate_outcomes(run):
        emitted[tokens] = emitted.get(tokens, 0.0) + weight
    return emitted


def lossless_gap(acceptor, tree: CandidateTree, kind: CandidateKind, p_fn: Callable[[Prefix], torch.Tensor],
                 q_fn: Optional[Callable[[Prefix], torch.Tensor]] = None, fixed_tokens: Optional[list[int]] = None,
                 root: int = 0) -> float:
    """The acceptor's rule alone (``acceptor.walk``) on one draft: the gap of :func:`continuation_gap`
    over ``tree.max_depth + 1`` tokens.

    ``p_fn(prefix)``: the target's distribution ``[V]`` after the root and ``prefix``.
    ``q_fn(prefix)``: the drafter's distribution for sampled kinds; ``fixed_tokens``: the
    candidate token of every non-root node for the deterministic kind.
    """

    def one_step(randomness):
        draft = draft_outcomes(tree, root, kind, fixed_tokens, q_fn, randomness)
        paths = [tuple(int(draft.tokens[i]) for i in tree.path_to(node)[1:]) for node in range(tree.num_nodes)]
        p_rows = torch.stack([p_fn(path) for path in paths])
        return acceptor.walk(draft, p_rows, randomness).new_tokens

    return continuation_gap(_distribution(one_step), p_fn, tree.max_depth + 1)


def composition_distribution(drafter, tree_builder, acceptor, target_logits: Callable[[Prefix], torch.Tensor],
                             context: DraftContext, sampling: SamplingParams) -> dict[Prefix, float]:
    """The exact distribution of what one step of the composed stages emits.

    Runs the real path ``drafter.propose -> tree_builder.select -> acceptor.accept`` again
    and again, every draw of the drafter and the acceptor going through one enumerating
    :class:`~spec.randomness.Randomness` (passed as their ``generator``). The verifier's
    part is played by ``target_logits(prefix)``: the target's raw logits ``[V]`` after the
    root and ``prefix`` (the acceptor applies ``sampling`` to them itself).
    """

    def one_step(randomness) -> Prefix:
        draft = tree_builder.select(drafter.propose(tree_builder.tree(), context, sampling, randomness))
        tokens = draft.tokens.tolist()
        paths = [tuple(tokens[i] for i in draft.tree.path_to(node)[1:]) for node in range(draft.tree.num_nodes)]
        logits = torch.stack([target_logits(path).double() for path in paths])
        verification = Verification(tree=draft.tree, logits=logits,
                                    hidden_states=torch.zeros(draft.tree.num_nodes, 1, dtype=torch.float64))
        return acceptor.accept(draft, verification, sampling, randomness).new_tokens

    return _distribution(one_step)


def composition_gap(drafter, tree_builder, acceptor, target_logits: Callable[[Prefix], torch.Tensor],
                    context: DraftContext, sampling: SamplingParams) -> float:
    """:func:`continuation_gap` of :func:`composition_distribution` over ``tree_builder.max_depth + 1``
    tokens, against the target's own sampler at ``sampling``: 0 up to rounding when the composition is lossless."""

    def p_fn(prefix: Prefix) -> torch.Tensor:
        return target_probs(target_logits(prefix).double(), sampling)

    emitted = composition_distribution(drafter, tree_builder, acceptor, target_logits, context, sampling)
    return continuation_gap(emitted, p_fn, tree_builder.max_depth + 1)
