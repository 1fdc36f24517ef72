"""``spec demo``: the shipped model completes a held-out snippet, with and without speculation."""

from __future__ import annotations

import argparse

import torch

from spec.runtime_options import add_runtime_arguments, verifier_for


def add_parser(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="complete a held-out Python snippet autoregressively and speculatively, and compare",
        description="Load the shipped model (trained by spec on the Python standard library) and its draft heads, "
        "complete a snippet from a held-out module with the autoregressive baseline and with a speculative "
        "decoder, and print both completions, tokens per second, mean accepted length and speedup. Under greedy "
        "decoding both completions are identical.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--drafter", default="medusa", help="which shipped heads draft (see spec/models/shipped)")
    demo.add_argument("--tree", default=None, help="a tree JSON file or Medusa choices list (JSON text); "
                      "default: the tree shipped for the drafter")
    demo.add_argument("--prompt", default=None, help="text to complete instead of a held-out snippet")
    demo.add_argument("--prompt-index", type=int, default=0, help="which held-out snippet to complete")
    demo.add_argument("--max-new-tokens", type=int, default=96, help="tokens to generate")
    demo.add_argument("--temperature", type=float, default=0.0,
                      help="0 = greedy (outputs identical); > 0 samples losslessly with rejection sampling")
    demo.add_argument("--seed", type=int, default=0, help="sampling seed")
    demo.add_argument("--random-model", action="store_true",
                      help="use a random tiny model and an oracle drafter instead (no shipped files needed)")
    add_runtime_arguments(demo)
    demo.set_defaults(func=run)


def _tree_argument(text: str):
    from spec.trees import load_tree, tree_from_json

    stripped = text.strip()
    return (tree_from_json(stripped) if stripped.startswith(("[", "{")) else load_tree(stripped))[0]


def run(args: argparse.Namespace) -> int:
    from spec import AutoregressiveDecoder, GreedyAcceptor, RejectionSamplingAcceptor, SpeculativeDecoder
    from spec.models.shipped import shipped_names

    if args.random_model or not shipped_names():
        if not args.random_model:
            print("No shipped model is installed (build one with `spec build-model --export --heads medusa`); "
                  "falling back to --random-model.\n")
        return _random_model_demo(args)
    from spec.models.shipped import heldout_prompts, load_shipped, load_shipped_drafter, load_shipped_tree
    from spec.trees import StaticTreeBuilder
    model, tokenizer = load_shipped(dtype=args.dtype, device=args.device)
    drafter = load_shipped_drafter(args.drafter, model)
    tree = _tree_argument(args.tree) if args.tree else load_shipped_tree(args.drafter)
    text = args.prompt if args.prompt is not None else heldout_prompts()[args.prompt_index]
    prompt = tokenizer(text, return_tensors="pt").input_ids
    acceptor = GreedyAcceptor() if args.temperature == 0 else RejectionSamplingAcceptor()
    verifier = verifier_for(model, drafter, args.verifier, args.compile)
    speculative = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree), verifier, acceptor)
    baseline = AutoregressiveDecoder(model)
    settings = dict(temperature=args.temperature, seed=args.seed)
    for decoder in (baseline, speculative):  # warm-up: first calls pay one-off initialisation
        decoder.generate(prompt, max_new_tokens=4, **settings)
    ar = baseline.generate(prompt, max_new_tokens=args.max_new_tokens, **settings)
    sd = speculative.generate(prompt, max_new_tokens=args.max_new_tokens, **settings)
    same = torch.equal(ar.sequences, sd.sequences)
    print(f"--- prompt ({prompt.shape[1]} tokens) ---\n{text}")
    print(f"--- autoregressive ---\n{tokenizer.decode(ar.new_tokens)}")
    print(f"--- speculative ({args.drafter}, {tree.num_nodes - 1} candidates, depth {tree.max_depth}) ---\n"
          f"{tokenizer.decode(sd.new_tokens)}")
    print("---")
    if args.temperature == 0:
        print(f"identical completions: {same}")
    else:
        print("sampled: both completions are draws from the same distribution (they differ as draws do)")
    print(f"tokens/s: autoregressive {ar.tokens_per_second:.1f}, speculative {sd.tokens_per_second:.1f} "
          f"(speedup {sd.tokens_per_second / ar.tokens_per_second:.2f}x)")
    print(f"mean accepted length: {sd.mean_accepted_length:.2f} tokens per verify step "
          f"({len(sd.steps)} steps for {sd.new_tokens.numel()} tokens)")
    print(f"verifier: {type(verifier).__name__} on {model.device}, {model.dtype}")
    return 0 if same or args.temperature > 0 else 1


def _random_model_demo(args: argparse.Namespace) -> int:
    from spec import AutoregressiveDecoder, GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
    from spec.testing.drafters import OracleDrafter
    from spec.testing.models import tiny_model
    from spec.trees import tree_from_choices

    from spec.models.placement import resolve_placement

    device, dtype = resolve_placement(args.device, args.dtype)
    model = tiny_model("llama", seed=args.seed, dtype=dtype, vocab_size=256, hidden_size=64).to(device)
    prompt = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(args.seed))
    tree = _tree_argument(args.tree) if args.tree else tree_from_choices(
        [[0], [1], [0, 0], [0, 1], [0, 0, 0], [0, 0, 0, 0]])
    baseline = AutoregressiveDecoder(model).generate(prompt, max_new_tokens=args.max_new_tokens)
    drafter = OracleDrafter(baseline.sequences, 256, accuracy=0.8, max_depth=tree.max_depth, seed=args.seed)
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree), verifier_for(model, drafter, args.verifier,
                                                                                       args.compile), GreedyAcceptor())
    result = decoder.generate(prompt, max_new_tokens=args.max_new_tokens)
    same = torch.equal(result.sequences, baseline.sequences)
    print("Random tiny Llama, oracle drafter (right 80% of the time); token ids, not text.")
    print(f"autoregressive : {baseline.new_tokens.tolist()}")
    print(f"speculative    : {result.new_tokens.tolist()}")
    print(f"identical completions: {same}")
    print(f"mean accepted length: {result.mean_accepted_length:.2f}; verify steps {len(result.steps)} "
          f"(autoregressive: {len(baseline.steps)})")
    return 0 if same else 1
