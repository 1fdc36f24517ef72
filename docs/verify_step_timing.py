"""Time one verify step of the shipped model's Medusa tree: bare forward vs generic vs fast verifiers.

    python docs/verify_step_timing.py [--threads 1] [--prefix 150] [--steps 60]

Isolates the verifier from drafting and acceptance: each step verifies the same 16-node tree on
top of the cache and commits a two-node path, so the cached prefix grows from --prefix by 2 per
step; compared with a plain transformers forward over the same number of tokens with no cache.
Prints milliseconds per step (median of 5 rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spec.apps.shipped import load_shipped, load_shipped_tree
from spec.protocols import Draft
from spec.verifiers import FastTreeVerifier, TreeAttentionVerifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prefix", type=int, default=150)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_shipped()
    tree = load_shipped_tree("medusa")
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 4000, (args.prefix,), generator=g)
    tokens = torch.randint(0, 4000, (tree.num_nodes,), generator=g)

    def verify_steps(verifier) -> float:
        verifier.reset()
        verifier.prefill(prefix)
        for _ in range(5):  # warm-up (and compilation)
            verifier.verify(Draft(tree=tree, tokens=tokens))
            verifier.commit((0,))
        start = time.perf_counter()
        for _ in range(args.steps):
            verifier.verify(Draft(tree=tree, tokens=tokens))
            verifier.commit((0, 1))
        return (time.perf_counter() - start) / args.steps * 1000

    def bare() -> float:
        ids = tokens[None]
        with torch.no_grad():
            model(ids)
            start = time.perf_counter()
            for _ in range(args.steps):
                model(ids)
        return (time.perf_counter() - start) / args.steps * 1000

    candidates = {
        f"transformers forward, {tree.num_nodes} tokens, no cache": bare,
        "TreeAttentionVerifier step": lambda v=TreeAttentionVerifier(model): verify_steps(v),
        "FastTreeVerifier step": lambda v=FastTreeVerifier(model): verify_steps(v),
        "FastTreeVerifier(compile=True) step": lambda v=FastTreeVerifier(model, compile=True): verify_steps(v),
    }
    results = {name: [] for name in candidates}
    for _ in range(5):  # rounds interleave the candidates so drift hits all alike
        for name, run in candidates.items():
            results[name].append(run())
    print(f"threads={args.threads} prefix={args.prefix} tree={tree.num_nodes} nodes, ms per step (median of 5)")
    for name, values in results.items():
        print(f"  {name:45s} {statistics.median(values):7.2f}")


if __name__ == "__main__":
    main()
