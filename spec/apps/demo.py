"""``spec demo``: the shipped model completes a held-out snippet, with and without speculation."""

from __future__ import annotations

import argparse
import statistics

import torch

from spec.bench.pairing import compile_with_verifier
from spec.apps.options import (add_runtime_arguments, compose_drafter, self_drafting,
                               verifier_from_options)


#: The composition the demo runs unless told otherwise (the fastest measured on the shipped model: docs/benchmarks.md).
DEFAULT_DRAFTER = "eagle3"
DEFAULT_BUILDER = "static"


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
    demo.add_argument("--drafter", default=None, help="which shipped heads draft (see spec/apps/shipped), ngram "
                      "(prompt lookup as a tree), or ngram+NAME (lookup merged with NAME's heads in one tree); "
                      f"default: {DEFAULT_DRAFTER}")
    demo.add_argument("--tree-builder", default=None, choices=("static", "cost"),
                      help="static: the drafter's tree every step; cost: each step keeps the subtree with the most "
                      "expected tokens per second, from costs measured on this machine first (a few seconds); "
                      f"default: {DEFAULT_BUILDER}")
    demo.add_argument("--tree", default=None, help="a tree JSON file or Medusa choices list (JSON text); "
                      "default: the tree shipped for the drafter")
    demo.add_argument("--prompt", default=None, help="text to complete instead of a held-out snippet")
    demo.add_argument("--prompt-index", type=int, default=None, help="which held-out snippet to complete "
                      "(0 to the number shipped - 1); default: 0")
    demo.add_argument("--max-new-tokens", type=int, default=96, help="tokens to generate")
    demo.add_argument("--temperature", type=float, default=None,
                      help="0 = greedy (outputs identical); > 0 samples losslessly with rejection sampling "
                      "(shipped model only); default: 0")
    demo.add_argument("--seed", type=int, default=0, help="sampling seed")
    demo.add_argument("--repeats", type=int, default=5,
                      help="timed runs of each decoder, interleaved; tokens/s is their median and the speedup the "
                      "median of each pair's ratio (one ~1 s run of each varies by tens of percent on a shared "
                      "machine)")
    demo.add_argument("--random-model", action="store_true",
                      help="use a random tiny model and an oracle drafter instead (no shipped files needed)")
    add_runtime_arguments(demo, compile_auto=(
        "on, CPU included (the timed runs follow a warm-up run, which pays for compiling: about 30 s on a 2-core "
        "CPU; drafting and verifying are then up to half again as fast there); with --random-model, on CUDA only"))
    demo.set_defaults(func=run)


def _tree_argument(text: str):
    from spec.trees import load_tree, tree_from_json

    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        return tree_from_json(stripped, "--tree")[0]
    return load_tree(stripped)[0]


def check_arguments(args: argparse.Namespace) -> None:
    """Every option, before any model is loaded; fills in the defaults. Raises OptionError & co."""
    from spec.apps.options import check_int, check_seed, check_temperature, check_verifier_kinds
    from spec.errors import OptionError
    from spec.models.placement import resolve_placement
    from spec.apps.shipped import shipped_names

    check_int(args.max_new_tokens, "--max-new-tokens", 1)
    check_int(args.repeats, "--repeats", 1, 100)
    check_seed(args.seed)
    resolve_placement(args.device, args.dtype)
    if args.temperature is not None:
        check_temperature(args.temperature, args.device, args.dtype)
    check_verifier_kinds(args.verifier, "--verifier", several=False)
    args.tree_value = _tree_argument(args.tree) if args.tree else None
    args.fallback = not args.random_model and not shipped_names()
    if args.random_model or args.fallback:
        ignored = [option for option, value in (("--drafter", args.drafter), ("--prompt", args.prompt),
                                                ("--prompt-index", args.prompt_index),
                                                ("--tree-builder", args.tree_builder)) if value is not None]
        if args.temperature:
            ignored.append("--temperature")
        if ignored:
            why = "--random-model" if args.random_model else "the random-model fallback (no shipped model installed)"
            raise OptionError(f"{', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply to {why}: it "
                              "decodes random token ids greedily with an oracle drafter. Drop "
                              f"{'it' if len(ignored) == 1 else 'them'}, or use the shipped model.")
        args.temperature = 0.0
        return
    from spec.apps.shipped import heldout_prompts, shipped_drafters

    args.drafter = args.drafter or DEFAULT_DRAFTER
    args.tree_builder = args.tree_builder or DEFAULT_BUILDER
    args.temperature = args.temperature or 0.0
    heads = args.drafter.removeprefix("ngram+") if args.drafter != "ngram" else None
    if heads is not None and heads not in shipped_drafters():
        raise OptionError(f"--drafter {args.drafter!r}: no shipped {heads!r} heads; choose from "
                          f"{', '.join(shipped_drafters())}, ngram, or ngram+NAME.")
    if args.tree_builder == "cost" and heads is not None and self_drafting(heads):
        raise OptionError(f"--tree-builder cost prunes each draft, which {heads} (self-drafting: its drafts go to its "
                          "own verifier whole) cannot take; use --tree-builder static.")
    if args.drafter.startswith("ngram+") and self_drafting(heads):
        raise OptionError(f"--drafter {args.drafter}: a self-drafter cannot be merged with others; use {heads} alone.")
    if args.prompt is not None:
        if args.prompt_index is not None:
            raise OptionError("--prompt and --prompt-index both choose the text to complete; give one of them.")
        if not args.prompt:
            raise OptionError("--prompt is empty; give some text to complete.")
        args.text = args.prompt
    else:
        prompts = heldout_prompts()
        index = 0 if args.prompt_index is None else args.prompt_index
        check_int(index, "--prompt-index", 0, len(prompts) - 1, hint=f" ({len(prompts)} held-out snippets are shipped)")
        args.text = prompts[index]


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    if args.random_model or args.fallback:
        if args.fallback:
            print("No shipped model is installed (build one with `spec build-model --export --heads medusa`); "
                  "falling back to --random-model.\n")
        return _random_model_demo(args)
    from spec import AutoregressiveDecoder, GreedyAcceptor, RejectionSamplingAcceptor, SpeculativeDecoder
    from spec.errors import ContextLengthError
    from spec.models import context_length
    from spec.apps.shipped import heldout_prompts, load_shipped, load_shipped_drafter, load_shipped_tree
    from spec.trees import StaticTreeBuilder

    model, tokenizer = load_shipped(dtype=args.dtype, device=args.device)
    text = args.text
    prompt = tokenizer(text, return_tensors="pt").input_ids
    if prompt.shape[1] + args.max_new_tokens > context_length(model):
        raise ContextLengthError(f"The prompt ({prompt.shape[1]} tokens) plus --max-new-tokens {args.max_new_tokens} "
                                 f"is over the model's context of {context_length(model)}; ask for at most "
                                 f"{max(context_length(model) - prompt.shape[1], 0)} new tokens or shorten the prompt.")
    drafter, tree = compose_drafter(args.drafter, lambda name: (load_shipped_drafter(name, model),
                                                                load_shipped_tree(name)), args.tree_builder == "cost",
                                   args.draft_weights)
    tree = args.tree_value if args.tree_value is not None else tree
    acceptor = GreedyAcceptor() if args.temperature == 0 else RejectionSamplingAcceptor()
    # The demo times warm runs only, after a warm-up run that pays for compiling: compiled by default everywhere
    # (spec generate's auto compiles on CUDA only, where one call need not amortise a compile on a CPU).
    compile = "on" if args.compile == "auto" else args.compile
    verifier = verifier_from_options(model, drafter, args.verifier, compile)
    compile_with_verifier(drafter, verifier)
    if getattr(verifier, "compiled", False):
        print("compiling the speculative decoder's step for this machine in a warm-up run (about 30 s on a 2-core "
              "CPU, once per process; --compile off skips it)...", flush=True)
    builder = StaticTreeBuilder(tree)
    if args.tree_builder == "cost":
        from spec.bench.costs import cost_aware_builder
        from spec.pipelines.step import Stages

        print("measuring this machine's verify costs and step overhead (two other held-out snippets)...", flush=True)
        others = [t for t in heldout_prompts()[-2:] if t != text] or [text]
        builder = cost_aware_builder(Stages(drafter, builder, verifier, acceptor), tree,
                                     [tokenizer(t, return_tensors="pt").input_ids[0] for t in others])
    speculative = SpeculativeDecoder(model, drafter, builder, verifier, acceptor)
    baseline = AutoregressiveDecoder(model)
    settings = dict(temperature=args.temperature, seed=args.seed)
    for decoder in (baseline, speculative):  # warm-up: first calls pay one-off initialisation
        decoder.generate(prompt, max_new_tokens=args.max_new_tokens, **settings)
    ar_runs, sd_runs = [], []
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine slows both alike
        ar_runs.append(baseline.generate(prompt, max_new_tokens=args.max_new_tokens, **settings))
        sd_runs.append(speculative.generate(prompt, max_new_tokens=args.max_new_tokens, **settings))
    ar, sd = ar_runs[0], sd_runs[0]  # the same seed: every run draws the same completion
    ar_speed = statistics.median(r.tokens_per_second for r in ar_runs)
    sd_speed = statistics.median(r.tokens_per_second for r in sd_runs)
    same = torch.equal(ar.sequences, sd.sequences)
    print(f"--- prompt ({prompt.shape[1]} tokens) ---\n{text}")
    print(f"--- autoregressive ---\n{tokenizer.decode(ar.new_tokens)}")
    sizing = ("sized each step by measured cost" if args.tree_builder == "cost" else "static")
    print(f"--- speculative ({args.drafter}, tree of up to {tree.num_nodes - 1} candidates, depth {tree.max_depth}, "
          f"{sizing}) ---\n"
          f"{tokenizer.decode(sd.new_tokens)}")
    print("---")
    divergence = None
    if args.temperature == 0:
        print(f"identical completions: {same}")
        if not same:
            from spec.bench.divergence import first_divergence

            divergence = first_divergence(model, ar.sequences, sd.sequences, prompt.shape[1])
            if divergence is not None:
                print(f"first divergence at new token {divergence.index}: autoregressive {divergence.expected}, "
                      f"speculative {divergence.got}; the model's top-2 logit gap there is "
                      f"{divergence.top2_gap:.3g} ({model.dtype})")
    else:
        print("sampled: both completions are draws from the same distribution (they differ as draws do)")
    # Each interleaved pair's ratio, and their median as the speedup (as spec bench computes it): a pair runs close
    # together in time, so the machine's drift over seconds moves both of its runs alike. The spread is that noise.
    pairs = sorted(fast.tokens_per_second / slow.tokens_per_second for slow, fast in zip(ar_runs, sd_runs))
    runs = (f", median of {args.repeats} interleaved pairs; single pairs {pairs[0]:.2f}x-{pairs[-1]:.2f}x"
            if args.repeats > 1 else "")
    print(f"tokens/s: autoregressive {ar_speed:.1f}, speculative {sd_speed:.1f} "
          f"(speedup {statistics.median(pairs):.2f}x{runs})")
    print(f"mean accepted length: {sd.mean_accepted_length:.2f} tokens per verify step "
          f"({len(sd.steps)} steps for {sd.new_tokens.numel()} tokens)")
    from spec.drafters import draft_weights_of

    compiled = "compiled" if getattr(verifier, "compiled", False) else "eager"
    print(f"verifier: {type(verifier).__name__} on {model.device}, {model.dtype}, {compiled}; draft weights: "
          f"{draft_weights_of(drafter)}")
    if same or args.temperature > 0:
        return 0
    half = model.dtype in (torch.float16, torch.bfloat16)
    if half and divergence is not None:
        # Tree verification runs other kernels than one-token decoding; in half precision a near-tie can flip.
        print("a near-tie flipped in half precision (not a property real models keep exactly); compare exactly "
              "with --dtype float32")
        return 0
    return 1


def _random_model_demo(args: argparse.Namespace) -> int:
    from spec import AutoregressiveDecoder, GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
    from spec.models.placement import resolve_placement
    # A random model accepts nothing a real drafter proposes; the oracle drafter shows the mechanics
    # without any shipped files.
    from spec.drafters.oracle import OracleDrafter
    from spec.models.tiny import tiny_model
    from spec.trees import tree_from_choices

    device, dtype = resolve_placement(args.device, args.dtype)
    model = tiny_model("llama", seed=args.seed, dtype=dtype, vocab_size=256, hidden_size=64).to(device)
    prompt = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(args.seed))
    tree = args.tree_value if args.tree_value is not None else tree_from_choices(
        [[0], [1], [0, 0], [0, 1], [0, 0, 0], [0, 0, 0, 0]])
    baseline = AutoregressiveDecoder(model).generate(prompt, max_new_tokens=args.max_new_tokens)
    drafter = OracleDrafter(baseline.sequences, 256, accuracy=0.8, max_depth=tree.max_depth, seed=args.seed)
    verifier = verifier_from_options(model, drafter, args.verifier, args.compile)
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree), verifier, GreedyAcceptor())
    result = decoder.generate(prompt, max_new_tokens=args.max_new_tokens)
    same = torch.equal(result.sequences, baseline.sequences)
    print("Random tiny Llama, oracle drafter (right 80% of the time); token ids, not text.")
    print(f"autoregressive : {baseline.new_tokens.tolist()}")
    print(f"speculative    : {result.new_tokens.tolist()}")
    print(f"identical completions: {same}")
    print(f"mean accepted length: {result.mean_accepted_length:.2f}; verify steps {len(result.steps)} "
          f"(autoregressive: {len(baseline.steps)})")
    return 0 if same else 1
