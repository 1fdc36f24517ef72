"""Several drafters filling one candidate tree, each given the nodes it has earned.

Every source proposes on the step's tree; their paths are merged into one trie (a path
two sources agree on is one node). Each node is scored by the estimated probability
that the verifier accepts it: the product, down its path, of its source's measured
acceptance rate at that depth and rank. The ``budget`` best nodes (the tree's size) are
kept. Rates are measured online from what the target went on to produce: at the next
step the context holds the accepted tokens and the bonus token, so at every depth down
that path (one deeper than accepted) each source's candidates are scored, the one that
matches the target's token a success (Beta(1, 1) prior). Judging against the target's
own tokens rather than the verified tree keeps the rates honest when a tree builder
prunes nodes before verification (``CostAwareTreeBuilder``): a pruned node that would
have been right still counts as right. The scores are therefore calibrated estimates of
each node's acceptance probability, which is what a cost-aware builder needs; wrapping a
single drafter (``MergedDrafter({"medusa": medusa})``) calibrates it. So on code that repeats itself the
n-gram source's long chains win the budget, and where it finds nothing the heads cover
the tree.

The merged draft is deterministic candidates (a union of proposals chosen by value
is no longer a draw from any one ``q``): lossless with every acceptor, like top-k
heads. Self-drafters whose verifier reuses their drafting work (Kangaroo) cannot be
merged, and are refused.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from spec.drafters.token_trie import TokenTrie
from spec.errors import ConfigurationError
from spec.protocols import CandidateKind, CandidateTree, Draft, DraftContext, DrafterTraits, SamplingParams

MAX_RANK = 4  # ranks at or beyond share one rate


class MergedDrafter:
    """``sources``: the drafters to merge, by name (``{"ngram": NGramDrafter(), "medusa": ...}``) or in a list."""

    def __init__(self, sources) -> None:
        named = dict(sources) if isinstance(sources, dict) else {
            f"{i}:{type(s).__name__}": s for i, s in enumerate(sources)}
        if not named:
            raise ConfigurationError("MergedDrafter needs at least one source drafter.")
        for name, source in named.items():
            traits = source.traits
            if traits.verifier is not None or not traits.prunable:
                raise ConfigurationError(
                    f"MergedDrafter cannot merge {name} ({type(source).__name__}): its drafts must reach its own "
                    "verifier whole. Use it on its own.")
        readers = {name: s.traits.features for name, s in named.items() if s.traits.reads_hidden_states}
        if len(set(readers.values())) > 1:
            raise ConfigurationError(
                f"MergedDrafter cannot merge drafters that read different hidden states ({readers}): one verifier "
                "reports one kind. Merge drafters reading the same features, or lookup with any one of them.")
        # Commits hand every source the hidden states the verifier reports: those its readers ask for.
        self.traits = DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC}, log_confidence=True,
                                    features=next(iter(readers.values()), "final"),
                                    reads_hidden_states=bool(readers))
        self.sources = named
        self._names = list(named)
        # successes and opportunities per (source, depth, rank)
        self._hits: dict[tuple[int, int, int], float] = {}
        self._tries: dict[tuple[int, int, int], float] = {}
        # The last draft's trie, each source's rank at each trie node, and the root's position.
        self._last: Optional[tuple[TokenTrie, list[dict[int, int]], int]] = None

    @property
    def compilable(self) -> bool:
        return any(getattr(s, "compilable", False) for s in self.sources.values())

    def compile(self, enabled: bool = True) -> "MergedDrafter":
        """Compile the sources that can be (head drafters; see ``HeadDrafter.compile``). Returns self."""
        for source in self.sources.values():
            if getattr(source, "compilable", False):
                source.compile(enabled)
        return self

    @property
    def max_depth(self) -> int:
        return max(s.max_depth for s in self.sources.values())

    def acceptance_rate(self, source: int, depth: int, rank: int) -> float:
        """P(accepted | parent accepted) of ``source``'s candidate at ``depth`` (1-based) and ``rank``, as measured."""
        key = (source, depth, min(rank, MAX_RANK))
        return (self._hits.get(key, 0.0) + 1.0) / (self._tries.get(key, 0.0) + 2.0)

    def rates(self) -> dict[str, list[float]]:
        """Measured rank-0 acceptance rate per source and depth (for reports)."""
        return {name: [self.acceptance_rate(i, d, 0) for d in range(1, self.max_depth + 1)]
                for i, name in enumerate(self._names)}

    def reset(self) -> None:
        for source in self.sources.values():
            source.reset()
        self._last = None  # rates are kept: they describe the sources, not the sequence

    def propose(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
                generator: Optional[torch.Generator] = None) -> Draft:
        self._score_last(context.tokens)
        trie = TokenTrie()
        # trie node -> the source's rank there, per source
        ranks: list[dict[int, int]] = [{} for _ in self._names]
        for i, name in enumerate(self._names):
            source = self.sources[name]
            draft = source.propose(tree.truncated(source.max_depth), context, sampling, generator)
            sub, tokens = draft.tree, draft.tokens.tolist()
            score = [0.0] * sub.num_nodes
            in_trie = [0] * sub.num_nodes  # draft node -> trie node; parents precede children
            for node in range(1, sub.num_nodes):
                parent = sub.parents[node]
                score[node] = score[parent] + math.log(self.acceptance_rate(i, sub.depth_list[node], sub.ranks[node]))
                in_trie[node] = trie.add_child(in_trie[parent], tokens[node], score[node])
                ranks[i][in_trie[node]] = sub.ranks[node]
        merged, _ = trie.to_draft(context.root_token, tree.num_nodes - 1, tree.max_depth, context.tokens.device)
        self._last = (trie, ranks, context.position)
        return merged

    def commit(self, tokens: torch.Tensor, hidden_states: torch.Tensor) -> None:
        for source in self.sources.values():
            source.commit(tokens, hidden_states)

    def _score_last(self, sequence: torch.Tensor) -> None:
        """Score the last draft against what followed its root in ``sequence`` (accepted tokens, then the bonus)."""
        if self._last is None:
            return
        trie, ranks, root = self._last
        self._last = None
        if sequence.shape[0] <= root + 1:
            return  # not a continuation of the last draft's sequence
        produced = sequence[root + 1: root + 1 + trie.max_depth()].tolist()
        node = 0
        for depth, token in enumerate(produced, start=1):
            children = trie.children[node]
            if not children:
                return
            taken = children.get(token)
            for i, source_ranks in enumerate(ranks):
                for child in children.values():
                    if child in source_ranks:
                        key = (i, depth, min(source_ranks[child], MAX_RANK))
                        self._tries[key] = self._tries.get(key, 0.0) + 1.0
                        if child == taken:
                            self._hits[key] = self._hits.get(key, 0.0) + 1.0
            if taken is None:
                return
            node = taken
