"""Where a head drafter's draft time goes on the shipped model: its decoder-layer passes against the verify pass.

    python docs/draft_cost.py [--drafters hydra,clover,eagle3] [--prompts 4] [--max-new-tokens 96] [--layers N]

Decodes the first held-out snippets greedily with each drafter as `spec bench` runs it by default on a CPU
(int8 draft weights, the fast verifier compiled, the drafter compiled with it), after one warm-up pass over the
same prompts, and splits each step's draft time into:

* the pass over the newly committed positions: Hydra++'s prefix layer and Clover's augmenting block
  (``drafter.context_layers()``), EAGLE's commit pass (its one layer over the accepted pairs);
* the tree fill (every depth's heads, projections and top-k; EAGLE's layer once per depth below the root);
* the rest (host work between them).

Each of those passes is one decoder layer at the target's width, so on a target of a few layers it costs a
sizeable fraction of the verify pass, whatever the heads do: the last column is that one pass over the verify.
Prints milliseconds per step (means over the timed generations) and the draft's and the verify's shares of a
step (draft + verify + accept + commit; the verify's share is a step's part of realised / zero-overhead ceiling).

``--layers N``: the same measurement on a deeper target, the shipped model's configuration with N decoder layers
and random weights, drafted by fresh heads of the shipped drafters' shapes (draft vocabularies included). Random
heads accept little, but a step's work does not depend on it: the tree is static and every pass over committed
positions is padded to the same size, so the split shows what the same drafters cost beside a deeper target.
"""

from __future__ import annotations

import argparse
import collections
import copy
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafters", default="hydra,clover,eagle3")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--layers", type=int, default=None,
                        help="a random target of the shipped width with this many layers (default: the shipped model)")
    args = parser.parse_args()

    from spec import GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
    from spec.apps.options import compose_drafter, verifier_from_options
    from spec.apps.shipped import heldout_prompts, load_shipped, load_shipped_drafter, load_shipped_tree
    from spec.bench.pairing import compile_with_verifier

    model, tokenizer = load_shipped()
    shipped = model
    load_heads = lambda n: (load_shipped_drafter(n, shipped), load_shipped_tree(n))  # noqa: E731
    if args.layers is not None:
        model, load_heads = deeper_target(model, args.layers, load_heads)
    prompts = [tokenizer(text, return_tensors="pt").input_ids for text in heldout_prompts()[: args.prompts]]
    print("| drafter | draft ms | commit-pass ms | fill ms | rest ms | verify ms | draft % of step "
          "| verify % of step | commit pass / verify |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.drafters.split(","):
        drafter, tree = compose_drafter(name, load_heads, False, "int8")
        verifier = verifier_from_options(model, drafter, "fast+compile", "auto")
        compile_with_verifier(drafter, verifier)
        decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree), verifier, GreedyAcceptor())
        for prompt in prompts:  # compiles every graph the timed run needs
            decoder.generate(prompt, max_new_tokens=args.max_new_tokens)
        seconds: collections.Counter = collections.Counter()

        def timed(obj, attribute: str, key: str) -> None:
            inner = getattr(obj, attribute)

            def wrapper(*a, **k):
                start = time.perf_counter()
                try:
                    return inner(*a, **k)
                finally:
                    seconds[key] += time.perf_counter() - start
            setattr(obj, attribute, wrapper)

        for layer in drafter.context_layers() if hasattr(drafter, "context_layers") else ():
            timed(layer, "output_for", "commit_pass")
        if hasattr(drafter, "_flush"):  # EAGLE, EAGLE-3: the pass over the accepted pairs
            timed(drafter, "_flush", "commit_pass")
        if getattr(drafter, "compiled_fill", None) is not None:
            timed(drafter, "compiled_fill", "fill")
        outputs = [decoder.generate(prompt, max_new_tokens=args.max_new_tokens) for prompt in prompts]
        steps = [step for output in outputs for step in output.steps if step.verify_s > 0]  # not the prefill's token
        n = len(steps)
        draft = sum(s.draft_s for s in steps) / n
        verify = sum(s.verify_s for s in steps) / n
        whole = sum(s.draft_s + s.verify_s + s.accept_s + s.commit_s for s in steps) / n
        commit_pass, fill = seconds["commit_pass"] / n, seconds["fill"] / n
        print(f"| {name} | {1e3 * draft:.2f} | {1e3 * commit_pass:.2f} | {1e3 * fill:.2f} "
              f"| {1e3 * (draft - commit_pass - fill):.2f} | {1e3 * verify:.2f} | {100 * draft / whole:.0f} "
              f"| {100 * verify / whole:.0f} | {commit_pass / verify:.2f} |", flush=True)
        del decoder, drafter, verifier
        torch._dynamo.reset()


def deeper_target(shipped, layers: int, load_shipped_heads):
    """The shipped configuration with ``layers`` decoder layers (random weights, seed 0), and a ``load_heads`` giving
    fresh heads of each shipped drafter's shapes for it (EAGLE-3 fusing its default low, middle and high layers)."""
    from transformers import AutoModelForCausalLM

    from spec.drafters.eagle3 import default_layers

    config = copy.deepcopy(shipped.config)
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()

    def load_heads(name: str):
        shipped_heads, tree = load_shipped_heads(name)
        cls, hyper = type(shipped_heads), dict(shipped_heads.hyperparameters())
        if "layers" in hyper:
            hyper["layers"] = list(default_layers(layers))
        drafter = cls.fresh(model, hyper, seed=0, candidates="top_k")
        if name != "eagle3" and shipped_heads.draft_vocab is not None:
            drafter.use_draft_vocab(shipped_heads.draft_vocab)
        return drafter, tree

    return model, load_heads


if __name__ == "__main__":
    main()
