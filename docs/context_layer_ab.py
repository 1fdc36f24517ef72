"""Interleaved A/B: a compiled Hydra++ or Clover drafter with its context layer compiled, and with it eager.

    python docs/context_layer_ab.py [--drafter hydra] [--prompts 6] [--max-new-tokens 96]

Both decoders are built as `spec bench` builds one by default on a CPU (int8 draft weights, the fast verifier
compiled, the drafter compiled with it); the second then runs its context layer (Hydra++'s prefix layer, Clover's
augmenting block) eagerly again (``ContextLayerCache.compile(None)``). After a warm-up pass over the prompts, each
prompt is decoded twice by each, the order alternating, and the draft and verify milliseconds per step and the
total seconds are printed.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafter", default="hydra", choices=["hydra", "clover"])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()

    from spec import GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
    from spec.apps.options import compose_drafter, verifier_from_options
    from spec.apps.shipped import heldout_prompts, load_shipped, load_shipped_drafter, load_shipped_tree
    from spec.bench.pairing import compile_with_verifier

    model, tokenizer = load_shipped()
    decoders = {}
    for label in ("context layer compiled", "context layer eager"):
        drafter, tree = compose_drafter(args.drafter, lambda n: (load_shipped_drafter(n, model), load_shipped_tree(n)),
                                        False, "int8")
        verifier = verifier_from_options(model, drafter, "fast+compile", "auto")
        compile_with_verifier(drafter, verifier)
        if label.endswith("eager"):
            for layer in drafter.context_layers():
                layer.compile(None)
        decoders[label] = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree), verifier, GreedyAcceptor())
    prompts = [tokenizer(text, return_tensors="pt").input_ids for text in heldout_prompts()[: args.prompts]]
    for decoder in decoders.values():
        for prompt in prompts:
            decoder.generate(prompt, max_new_tokens=args.max_new_tokens)
    totals = {label: [0.0, 0.0, 0.0, 0] for label in decoders}  # draft s, verify s, total s, steps
    for repeat in range(2):
        for prompt in prompts:
            order = list(decoders.items()) if repeat % 2 == 0 else list(reversed(decoders.items()))
            for label, decoder in order:
                output = decoder.generate(prompt, max_new_tokens=args.max_new_tokens)
                steps = [step for step in output.steps if step.verify_s > 0]
                total = totals[label]
                total[0] += sum(step.draft_s for step in steps)
                total[1] += sum(step.verify_s for step in steps)
                total[2] += output.total_s
                total[3] += len(steps)
    for label, (draft, verify, seconds, steps) in totals.items():
        print(f"{args.drafter}, {label}: draft {1e3 * draft / steps:.2f} ms/step, verify {1e3 * verify / steps:.2f} "
              f"ms/step, draft {draft / seconds:.1%} of the time, {seconds:.2f} s in all")


if __name__ == "__main__":
    main()
