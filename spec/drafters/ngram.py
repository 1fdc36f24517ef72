"""N-gram lookup (prompt lookup decoding) as a tree drafter.

The last ``n`` committed tokens (longest ``n`` from ``max_ngram`` down to ``min_ngram``
that occurs earlier) are looked up in everything committed so far, prompt and output.
The tokens that followed each earlier occurrence, up to the tree's depth, become
candidate paths; several occurrences that continue differently become branches of a
trie, each path scored by the share of occurrences that support it. Code, logs and
edits of the prompt repeat themselves, so these paths are long and often right, and
cost no forward pass at all.

Candidates are a deterministic function of the committed tokens, so every acceptor
handles them losslessly. The index of n-grams grows with each step's new tokens
instead of being rebuilt (one pass over the new tokens per step).
"""

from __future__ import annotations

from typing import Optional

import torch

from spec.drafters.token_trie import TokenTrie, log_fraction
from spec.errors import ConfigurationError
from spec.protocols import CandidateKind, CandidateTree, Draft, DraftContext, DrafterTraits, SamplingParams


class NGramDrafter:
    """``max_ngram`` / ``min_ngram``: the suffix lengths tried, longest first. ``max_matches``: the
    most recent occurrences whose continuations are used. ``max_depth``: the deepest path proposed."""

    traits = DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC}, log_confidence=True,
                           reads_hidden_states=False)

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, max_matches: int = 8, max_depth: int = 10) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ConfigurationError(
                f"NGramDrafter needs 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram}, max_ngram={max_ngram}.")
        if max_matches < 1 or max_depth < 1:
            raise ConfigurationError(
                f"NGramDrafter needs max_matches >= 1 and max_depth >= 1, got {max_matches} and {max_depth}.")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.max_matches, self._max_depth = max_matches, max_depth
        self.reset()

    @property
    def max_depth(self) -> int:
        return self._max_depth

    def reset(self) -> None:
        self._tokens: list[int] = []
        # n -> n-gram -> positions p (ascending) where tokens[p - n : p] is the n-gram; p is what follows it.
        self._index: dict[int, dict[tuple[int, ...], list[int]]] = {
            n: {} for n in range(self.min_ngram, self.max_ngram + 1)}

    def commit(self, tokens: torch.Tensor, hidden_states: torch.Tensor) -> None:
        pass  # everything it needs arrives in DraftContext.tokens

    def _extend_index(self, tokens: list[int]) -> None:
        if tokens[: len(self._tokens)] != self._tokens:  # not a continuation of what was indexed: start over
            self.reset()
        for p in range(len(self._tokens) + 1, len(tokens) + 1):  # p = len(self._tokens) is indexed already
            for n, table in self._index.items():
                if p >= n:
                    table.setdefault(tuple(tokens[p - n : p]), []).append(p)
        self._tokens = tokens

    def continuations(self, tokens: list[int], depth: int) -> list[list[int]]:
        """Continuations (most recent occurrence first) of the longest matching suffix, each up to ``depth``."""
        self._extend_index(tokens)
        end = len(tokens)
        for n in range(min(self.max_ngram, end - 1), self.min_ngram - 1, -1):
            positions = [p for p in self._index[n].get(tuple(tokens[end - n :]), ()) if p < end]
            if positions:
                return [tokens[p : p + depth] for p in reversed(positions[-self.max_matches :])]
        return []

    def propose(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
                generator: Optional[torch.Generator] = None) -> Draft:
        tokens = context.tokens.tolist()
        depth = min(tree.max_depth, self._max_depth)
        found = self.continuations(tokens, depth)
        trie = TokenTrie()
        support: dict[int, int] = {}
        for continuation in found:
            for node in trie.add_path(continuation, [0.0] * len(continuation)):
                support[node] = support.get(node, 0) + 1
        # A path's score: the share of occurrences that continue this way.
        for node in range(1, len(trie)):
            trie.scores[node] = log_fraction(support[node], len(found))
        draft, _ = trie.to_draft(context.root_token, tree.num_nodes - 1, depth, context.tokens.device)
        return draft
