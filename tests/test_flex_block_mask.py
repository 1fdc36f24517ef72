"""FlexAttention block masks for tree verifies, built from lengths without ``create_block_mask`` (issue 24, item 4).

Eager FlexAttention on the CPU applies the mask function to every element and ignores which blocks are full, so
an end-to-end run cannot tell a wrong full block from a right one. The masks are therefore compared element by
element as the fused kernels read them: a full block is visible whole, a partial block where the mask function
says so, any other block not at all.
"""

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from spec import CandidateTree, Draft, FastTreeVerifier, TreeAttentionVerifier
from spec.runtime import attention as attention_module
from spec.runtime.attention import (FLEX_BLOCK, FlexTreeMasks, flex_mask, sdpa_mask, tree_block_layout)
from spec.runtime.masks import in_window
from spec.runtime.shapes import attend_bucket

from helpers import VOCAB, config_override, model, verify_steps


def random_tree(n: int, g: torch.Generator, bushy: bool) -> CandidateTree:
    # bushy: parents drawn among the first few nodes (wide, shallow); otherwise among all (deep chains too)
    parents = [-1] + [int(torch.randint(0, min(i, 3) if bushy else i, (1,), generator=g)) for i in range(1, n)]
    ranks, seen = [], {}
    for p in parents:
        ranks.append(seen.get(p, 0))
        seen[p] = seen.get(p, 0) + 1
    return CandidateTree.from_parents(parents, ranks)


def ancestors_of(tree: CandidateTree, window):
    depths = tree.depths.to(torch.int64)
    return tree.ancestor_mask & in_window(depths[:, None], depths[None, :], window), depths


def elements(block_mask) -> torch.Tensor:
    """``[n, attend]`` bool: what a fused kernel lets each query see under ``block_mask``."""
    n, attend = block_mask.seq_lengths
    size = block_mask.BLOCK_SIZE
    rows, cols = -(-n // size[0]) * size[0], -(-attend // size[1]) * size[1]
    full, partial = torch.zeros(rows, cols, dtype=torch.bool), torch.zeros(rows, cols, dtype=torch.bool)
    for dense, counts, indices in ((full, block_mask.full_kv_num_blocks, block_mask.full_kv_indices),
                                   (partial, block_mask.kv_num_blocks, block_mask.kv_indices)):
        if counts is None:
            continue
        for i in range(counts.shape[-1]):
            for j in indices[0, 0, i, : int(counts[0, 0, i])].tolist():
                dense[i * size[0] : (i + 1) * size[0], j * size[1] : (j + 1) * size[1]] = True
    assert not (full & partial).any(), "a block listed both full and partial"
    evaluated = create_mask(block_mask.mask_mod, 1, 1, n, attend, device="cpu")[0, 0]
    return full[:n, :attend] | (partial[:n, :attend] & evaluated)


def cases():
    g = torch.Generator().manual_seed(0)
    trees = [CandidateTree(parents=[-1], ranks=[0]),
             CandidateTree(parents=[-1, 0, 1, 2, 3], ranks=[0] * 5),
             CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3], ranks=[0, 0, 1, 0, 1, 0, 0])]
    trees += [random_tree(int(torch.randint(2, 40, (1,), generator=g)), g, bushy=k % 2 == 0) for k in range(3)]
    trees += [random_tree(200, g, bushy=True), random_tree(300, g, bushy=False)]  # two and three query blocks
    for tree in trees:
        for start in (0, 5, 127, 128, 129, 255, 300, 511):
            for window in (None, 5, 130):
                yield tree, start, window


def test_layout_block_mask_equals_create_block_mask_element_by_element():
    masks = FlexTreeMasks()
    checked = crossing = 0
    for tree, start, window in cases():
        ancestors, depths = ancestors_of(tree, window)
        n = tree.num_nodes
        # Every other case attends over a compiled step's bucketed length: rows past the tree, stale, hidden.
        attend = attend_bucket(start + n) if checked % 2 else start + n
        positions = depths + start
        built = masks(ancestors, start, attend, positions, window)
        reference = flex_mask(ancestors, start, attend, positions, window)
        expected = sdpa_mask(ancestors, start, attend, positions, window)
        assert built.seq_lengths == reference.seq_lengths == (n, attend)
        assert torch.equal(elements(reference), expected)  # the reference reads as the SDPA mask
        assert torch.equal(elements(built), expected), (n, start, window, attend)
        # Block level: every block create_block_mask reads is read here too (and no other in the plain case).
        ours, theirs = built.to_dense()[0, 0].bool(), reference.to_dense()[0, 0].bool()
        assert not (theirs & ~ours).any(), (n, start, window)
        if window is None and n <= FLEX_BLOCK:
            assert torch.equal(ours, theirs)
            # The point: below 128 nodes create_block_mask finds no full block; every whole prefix block is one.
            assert int(reference.full_kv_num_blocks.sum()) == 0
            assert built.full_kv_num_blocks.flatten().tolist() == [start // FLEX_BLOCK]
        crossing += (start % FLEX_BLOCK) + n > FLEX_BLOCK
        checked += 1
    assert checked == 8 * 8 * 3 and crossing > 50  # prefixes and trees crossing 128-row blocks


def test_layouts_follow_lengths_not_tree_contents():
    # Lengths within the same blocks: one layout. The prefix crossing a block: another.
    a = tree_block_layout(300, 7, 320, None)
    assert a == tree_block_layout(290, 20, 311, None) != tree_block_layout(250, 7, 320, None)
    assert (a.full, a.partial) == (((0, 1),), ((2,),))
    b = tree_block_layout(250, 7, 320, None)
    assert (b.full, b.partial) == (((0,),), ((1, 2),))
    # Two query blocks: the first reads the tree's rows up to its own last node only.
    c = tree_block_layout(0, 200, 256, None)
    assert (c.full, c.partial) == (((), ()), ((0,), (0, 1)))
    # A window of 130 rows at a prefix of 300: block 0 (rows 0-127) is out of every query's reach, block 1
    # (128-255) is out of the root's (300 - 255 < 130 holds: partial), block 2 holds the prefix's end.
    d = tree_block_layout(300, 7, 320, 130)
    assert (d.full, d.partial) == (((),), ((1, 2),))


def test_flex_masks_are_kept_per_layout_and_create_block_mask_never_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("create_block_mask ran during a verify")

    monkeypatch.setattr("torch.nn.attention.flex_attention.create_block_mask", refuse)
    m = model("llama", seed=4, context=512)
    tree = CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3], ranks=[0, 0, 1, 0, 1, 0, 0])
    plan = [(tree, (0, 1, 3, 6))] * 30  # 4 rows a step: the prefix walks from 110 across 128 to 230
    verifier = FastTreeVerifier(m, attention="flex")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex_attention warns that eager mode is unfused
        verify_steps(verifier, torch.arange(110) % VOCAB, plan)
    masks = verifier._masks["flex"]
    assert len(masks) == 3  # prefix end in block 0, rows spanning blocks 0-1, prefix end in block 1


def test_flex_verify_across_blocks_equals_sdpa_and_generic():
    """Eager flex on the CPU (exact, unfused) over prefixes crossing 128- and 256-row blocks, with a window."""
    g = torch.Generator().manual_seed(2)
    trees = [CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3], ranks=[0, 0, 1, 0, 1, 0, 0]), random_tree(20, g, True),
             CandidateTree(parents=[-1, 0, 1], ranks=[0, 0, 0])]
    plan = [(trees[k % 3], tuple(trees[k % 3].path_to(trees[k % 3].num_nodes - 1))) for k in range(40)]
    for arch, window in (("llama", None), ("mistral", 150)):
        m = model(arch, seed=4, context=512)
        prefix = torch.randint(0, VOCAB, (150,), generator=g)
        with config_override(m, sliding_window=window):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                flex_verifier = FastTreeVerifier(m, attention="flex")
                flex = verify_steps(flex_verifier, prefix, plan)
            sdpa = verify_steps(FastTreeVerifier(m, attention="sdpa"), prefix, plan)
            generic = verify_steps(TreeAttentionVerifier(m), prefix, plan)
        assert flex_verifier.cached_length > 2 * FLEX_BLOCK
        for a, b, c in zip(flex, sdpa, generic):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def test_a_wrong_full_block_is_caught(monkeypatch):
    """The element check sees a full block that should be partial (a layout marking the prefix's end full)."""
    real = attention_module.tree_block_layout

    def greedy(start, n, attend, window, block=FLEX_BLOCK):
        layout = real(start, n, attend, window, block)
        return type(layout)(key_blocks=layout.key_blocks, block=layout.block,
                            full=tuple(f + p[:1] for f, p in zip(layout.full, layout.partial)),
                            partial=tuple(p[1:] for p in layout.partial))

    monkeypatch.setattr(attention_module, "tree_block_layout", greedy)
    tree = CandidateTree(parents=[-1, 0, 0], ranks=[0, 0, 1])
    ancestors, depths = ancestors_of(tree, None)
    built = FlexTreeMasks()(ancestors, 130, 133, depths + 130, None)
    assert not torch.equal(elements(built), sdpa_mask(ancestors, 130, 133, depths + 130, None))
