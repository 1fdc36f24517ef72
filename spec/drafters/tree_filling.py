"""Filling a candidate tree from draft heads: the parts every head drafter shares.

* :func:`check_tree_fits` refuses trees a drafter cannot fill;
* :func:`root_only_draft` is the draft when there is nothing to draft from yet;
* :func:`path_log_confidence` turns per-node log-probabilities into the cumulative
  path confidences dynamic tree builders prune with;
* :func:`fill_depth_by_depth` drives drafters whose head at depth d reads the
  tokens drafted above it (Hydra, Clover): one batched head call per depth; it takes
  each parent's top-k, or draws the children from the parent's ``q`` (sampled kinds).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Optional

import attrs
import torch

from spec.errors import InvalidTreeError, TreeTooDeepError
from spec.drafters.draft_vocab import DraftVocabulary
from spec.drafters.sampled import CandidateSampling, draw_siblings
from spec.protocols import CandidateKind, CandidateTree, Draft


def check_tree_fits(tree: CandidateTree, num_heads: int, vocab_size: int, what: str) -> None:
    """Refuse trees deeper than the drafter's heads or asking for more ranks than the vocabulary has."""
    if tree.max_depth > num_heads:
        raise TreeTooDeepError(
            f"The tree is {tree.max_depth} deep but this {what} has {num_heads} heads "
            "(one per depth); use a shallower tree or more heads."
        )
    if tree.max_rank >= vocab_size:
        raise InvalidTreeError(f"The tree asks for rank {tree.max_rank} but the (draft) vocabulary has {vocab_size} tokens; "
                               "use a narrower tree or a larger draft vocabulary.")


def root_only_draft(root_token: int, device: torch.device) -> Draft:
    """The draft of a step with no hidden state to draft from (a one-token prompt): the root alone."""
    return Draft(
        tree=CandidateTree.root_only(),
        tokens=torch.tensor([root_token], dtype=torch.long, device=device),
        log_confidence=torch.zeros(1, device=device),
    )


def path_log_confidence(tree: CandidateTree, node_logprob: torch.Tensor) -> torch.Tensor:
    """``[n]`` cumulative draft log-probability of each node's path (root 0): the sum over its ancestors."""
    return tree.ancestor_mask.to(device=node_logprob.device, dtype=node_logprob.dtype) @ node_logprob


@attrs.frozen(eq=False)
class DepthStep:
    """What one depth of depth-by-depth drafting works on (tensors on the drafter's device).

    ``nodes``: ``[N]`` the nodes at ``depth`` that have children, which the head for
    depth ``depth + 1`` expands in one batched call. ``paths``: ``[N, depth + 1]`` each
    of them's path, root first, the node itself last. ``children``: the nodes at
    ``depth + 1``; child c is the ``child_rank[c]``-th most likely token of row
    ``child_row[c]`` of the head's output.
    """

    depth: int
    nodes: torch.Tensor
    paths: torch.Tensor
    children: torch.Tensor
    child_row: torch.Tensor
    child_rank: torch.Tensor
    max_rank: int


@lru_cache(maxsize=128)
def depth_plan(tree: CandidateTree, device: torch.device) -> tuple[DepthStep, ...]:
    """The tree's :class:`DepthStep` per depth, computed once per tree shape and device."""
    steps = []
    for depth in range(tree.max_depth):
        nodes = [i for i, d in enumerate(tree.depth_list) if d == depth and tree.children[i]]
        row = {node: r for r, node in enumerate(nodes)}
        children = [c for node in nodes for c in tree.children[node]]
        steps.append(DepthStep(
            depth=depth,
            nodes=torch.tensor(nodes, dtype=torch.long, device=device),
            paths=torch.tensor([tree.path_to(node) for node in nodes], dtype=torch.long, device=device),
            children=torch.tensor(children, dtype=torch.long, device=device),
            child_row=torch.tensor([row[tree.parents[c]] for c in children], dtype=torch.long, device=device),
            child_rank=torch.tensor([tree.ranks[c] for c in children], dtype=torch.long, device=device),
            max_rank=max(tree.ranks[c] for c in children),
        ))
    return tuple(steps)


#: ``next_logits(step, tokens)``: logits ``[N, V]`` for the children of ``step.nodes``,
#: given ``tokens`` ``[n]`` already filled down to ``step.depth``.
NextLogits = Callable[[DepthStep, torch.Tensor], torch.Tensor]


def fill_depth_by_depth(tree: CandidateTree, root_token: int, next_logits: NextLogits,
                        device: torch.device, sampled: Optional[CandidateSampling] = None,
                        draft_vocab: Optional[DraftVocabulary] = None,
                        compiled: Optional[Callable] = None) -> Draft:
    """A draft whose children come from their parent's head output: its top-k (deterministic), or
    drawn from it when ``sampled`` is given (the draft then carries each child's ``q``).

    Depths are filled in order because the head at depth d + 1 may read the tokens
    chosen at depths <= d on its path. With a ``draft_vocab``, ``next_logits`` gives logits
    over its tokens only (``[N, K]``). ``compiled``: :func:`fill_top_k` compiled (a drafter's
    ``compile()``), used for the deterministic kind; ``next_logits`` must then be traceable.
    """
    tokens = torch.full((tree.num_nodes,), root_token, dtype=torch.long, device=device)
    if sampled is not None:
        full = next_logits if draft_vocab is None else lambda step, t: draft_vocab.to_full(next_logits(step, t))
        return _fill_sampled(tree, tokens, full, device, sampled)
    token_ids = None if draft_vocab is None else draft_vocab.token_ids.to(device)
    fill = fill_top_k if compiled is None else compiled
    tokens, node_logprob = fill(depth_plan(tree, torch.device(device)), tokens, next_logits, token_ids)
    return Draft(tree=tree, tokens=tokens, kind=CandidateKind.DETERMINISTIC,
                 log_confidence=path_log_confidence(tree, node_logprob))


def fill_top_k(plan: tuple[DepthStep, ...], tokens: torch.Tensor, next_logits: NextLogits,
               token_ids: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic fill as a pure tensor function (what a drafter's ``compile()`` compiles: one graph per
    tree shape): ``tokens`` ``[n]`` with the root filled -> every node's token ``[n]`` and its draft
    log-probability ``[n]`` (root 0). ``token_ids`` ``[K]`` maps draft-vocabulary indices to token ids."""
    node_logprob = torch.zeros(tokens.shape[0], device=tokens.device)
    for step in plan:
        logprobs = next_logits(step, tokens).float().log_softmax(dim=-1)
        top_logprobs, top_tokens = torch.topk(logprobs, step.max_rank + 1, dim=-1)  # [N, k]
        chosen = top_tokens[step.child_row, step.child_rank]
        tokens = tokens.index_put((step.children,), chosen if token_ids is None else token_ids[chosen])
        node_logprob = node_logprob.index_put((step.children,), top_logprobs[step.child_row, step.child_rank])
    return tokens, node_logprob


def _fill_sampled(tree: CandidateTree, tokens: torch.Tensor, next_logits: NextLogits, device: torch.device,
                  sampled: CandidateSampling) -> Draft:
    node_q: Optional[torch.Tensor] = None  # [n, V] float64: the q each node was drawn from (its parent's)
    node_logprob = torch.zeros(tree.num_nodes, dtype=torch.float64, device=device)
    kept = [True] * tree.num_nodes
    for step in depth_plan(tree, torch.device(device)):
        q_rows = sampled.draft_distribution(next_logits(step, tokens))  # [N, V]
        if node_q is None:
            node_q = torch.zeros(tree.num_nodes, q_rows.shape[-1], dtype=torch.float64, device=device)
        for row, parent in enumerate(step.nodes.tolist()):
            children = tree.children[parent]
            drawn = draw_siblings(q_rows[row], len(children), sampled.kind, sampled.randomness)
            for child, token in zip(children, drawn):
                if token is None or not kept[parent]:
                    kept[child] = False
                    continue
                tokens[child] = token
                node_q[child] = q_rows[row]
                node_logprob[child] = q_rows[row, token].log()
    if node_q is None:  # a root-only tree: nothing was drawn
        node_q = torch.zeros(tree.num_nodes, 1, dtype=torch.float64, device=device)
    if not all(kept):  # q ran out of tokens (tiny vocabularies): the children it could not give are dropped
        keep = [i for i in range(tree.num_nodes) if kept[i]]
        index = torch.tensor(keep, device=device)
        tree, tokens, node_q, node_logprob = tree.subtree(keep), tokens[index], node_q[index], node_logprob[index]
    return Draft(tree=tree, tokens=tokens, kind=sampled.kind, draft_probs=node_q,  # root's row: unused
                 log_confidence=path_log_confidence(tree, node_logprob))
