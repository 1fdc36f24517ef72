"""``spec bench``: measure pipelines side by side with transformers on the same prompts."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from spec.bench.pairing import compile_with_verifier
from spec.apps.options import add_runtime_arguments, compose_drafter, verifier_from_options


def add_parser(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmark speculative pipelines against autoregressive decoding and transformers",
        description="Run every named pipeline and the baselines (AutoregressiveDecoder, transformers generate, "
        "transformers prompt lookup) on the same prompts, interleaved, and write report.json, report.md and "
        "PNG plots. Speedups are ratios to transformers generate measured in the same run; greedy outputs that "
        "differ from the baseline's are flagged.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--drafters", default="medusa", help="comma-separated drafters to benchmark: shipped heads "
                       "(or with --model the heads under its heads/ directory), ngram (prompt lookup as a tree: no "
                       "weights), or ngram+NAME (lookup merged with NAME's heads in one tree, on NAME's tree plus an "
                       "8-deep chain)")
    bench.add_argument("--tree-builder", default="static",
                       help="comma-separated, one row each: static (each drafter's tree every step) or cost (each step "
                       "keeps the subtree with the most expected tokens per second, from this machine's measured "
                       "verify costs and per-step overhead: CostAwareTreeBuilder; a single drafter is wrapped in "
                       "MergedDrafter to calibrate its scores)")
    bench.add_argument("--sweep", default=None, help="comma-separated max_new_tokens values (e.g. 1,4,16,64,256,1000): "
                       "after the main run, every method again at each length, reported against the baseline with "
                       "the baseline's measured run-to-run noise (sweep.md, sweep.json); prompts are cut to fit the "
                       "context")
    bench.add_argument("--model", default=None, help="a local transformers model directory to benchmark instead of "
                       "the shipped model: its tokenizer (with a chat template for Spec-Bench questions), heads under "
                       "heads/<name>/ and optional trees/<name>.json (the layout spec build-model writes); needs "
                       "--prompts")
    bench.add_argument("--prompts", default=None, help="JSONL of prompts: {\"prompt\": text} lines (optional "
                       "\"category\"), or Spec-Bench questions {\"question_id\", \"category\", \"turns\": [...]}, "
                       "each turn a prompt rendered with the chat template after the earlier turns and their greedy "
                       "answers (the model's tokenizer needs a chat template); a per-category table follows the "
                       "main one. Default: the shipped held-out snippets")
    bench.add_argument("--num-prompts", type=int, default=None, help="how many prompts (questions, with all their "
                       "turns) to use, the first ones; default: 8, or all if there are fewer")
    bench.add_argument("--max-new-tokens", type=int, default=96, help="tokens per prompt")
    bench.add_argument("--repeats", type=int, default=3, help="timed repeats (medians are reported)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds")
    bench.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 uses rejection sampling")
    bench.add_argument("--acceptors", default="auto", help="comma-separated acceptors, one row each: auto (greedy at "
                       "temperature 0, else rejection), greedy, rejection, traversal, block (on a chain as deep as "
                       "the drafter's tree), typical (not lossless)")
    bench.add_argument("--no-transformers", action="store_true", help="skip the transformers baselines")
    bench.add_argument("--assistant", default=None, help="a smaller transformers model directory (same tokenizer): "
                       "adds transformers assisted generation with it as the draft model")
    bench.add_argument("--no-profile", action="store_true", help="skip the extra pass that measures the share of "
                       "each step outside network forward passes")
    add_runtime_arguments(bench, several_verifiers=True)
    bench.add_argument("--out", default="bench-out", help="output directory, checked writable before the run and "
                       "replaced as a whole when the report is written (other files in it are kept)")
    bench.set_defaults(func=run)


DEFAULT_PROMPTS = 8
ACCEPTORS = ("auto", "greedy", "rejection", "traversal", "block", "typical")


def make_acceptor(name: str, temperature: float):
    from spec import acceptors

    if name == "auto":
        name = "greedy" if temperature == 0 else "rejection"
    return {"greedy": acceptors.GreedyAcceptor, "rejection": acceptors.RejectionSamplingAcceptor,
            "traversal": acceptors.TraversalVerificationAcceptor, "block": acceptors.BlockVerificationAcceptor,
            "typical": acceptors.TypicalAcceptor}[name]()


def read_prompts(path) -> list[str]:
    """The first turn of each prompt in a --prompts file (spec's or Spec-Bench's format; see ``read_bench_prompts``)."""
    from spec.bench.prompts import read_bench_prompts

    return [question.turns[0] for question in read_bench_prompts(path)]


def check_arguments(args: argparse.Namespace) -> None:
    """Every option and input, before any model is loaded: numbers, names, the prompts, the assistant
    model and that --out can be written (so a finished run is never lost to an unwritable path)."""
    from spec.apps.options import DRAFT_WEIGHT_CHOICES, check_int, check_names, check_temperature, check_verifier_kinds
    from spec.errors import CheckpointError, OptionError
    from spec.io import check_model_directory, check_writable_directory
    from spec.models.placement import resolve_placement
    from spec.apps.shipped import heldout_prompts, shipped_drafters, shipped_names

    check_int(args.max_new_tokens, "--max-new-tokens", 1)
    check_int(args.repeats, "--repeats", 1, hint=" timed repeats (medians are reported)")
    check_int(args.warmup, "--warmup", 0, hint=" (0 skips the warm-up)")
    if args.num_prompts is not None:
        check_int(args.num_prompts, "--num-prompts", 1)
    resolve_placement(args.device, args.dtype)
    check_temperature(args.temperature, args.device, args.dtype)
    args.verifier_kinds = check_verifier_kinds(args.verifiers, "--verifiers", several=True)
    args.acceptor_names = check_names([a.strip() for a in args.acceptors.split(",") if a.strip()], "--acceptors",
                                      list(ACCEPTORS), "acceptor")
    if args.temperature > 0 and "greedy" in args.acceptor_names:
        raise OptionError("--acceptors greedy decodes greedily only; drop it or use --temperature 0.")
    if args.model is not None:
        from spec.text.generator import heads_names

        check_model_directory(args.model, "--model directory", need_tokenizer=True)
        if not args.prompts:
            raise OptionError("--model needs --prompts: the held-out snippets belong to the shipped model.")
        available = heads_names(args.model)
    elif not shipped_names():
        raise CheckpointError("spec bench measures the shipped model, which is not installed; build it with "
                              "`spec build-model --export --heads medusa`, or give --model.")
    else:
        available = shipped_drafters()
    from spec.apps.options import self_drafting

    # Self-drafters hand their drafts to their own verifier whole: they can be neither merged nor pruned.
    own_verifier = {name for name in available if self_drafting(name)}
    composed = ["ngram"] + [f"ngram+{name}" for name in available if name not in own_verifier]
    args.drafter_names = check_names([d.strip() for d in args.drafters.split(",") if d.strip()], "--drafters",
                                     list(available) + composed, "drafter")
    args.draft_weight_names = check_names([w.strip() for w in args.draft_weights.split(",") if w.strip()],
                                          "--draft-weights", DRAFT_WEIGHT_CHOICES, "draft weights")
    args.builder_names = check_names([b.strip() for b in args.tree_builder.split(",") if b.strip()],
                                     "--tree-builder", ["static", "cost"], "tree builder")
    if "cost" in args.builder_names:
        refused = [name for name in args.drafter_names if name in own_verifier]
        if refused:
            raise OptionError(f"--tree-builder cost prunes each draft, which {', '.join(refused)} (self-drafting, "
                              "its drafts go to its own verifier whole) cannot take; bench it with --tree-builder "
                              "static.")
    args.sweep_lengths = []
    if args.sweep:
        try:
            args.sweep_lengths = [int(n) for n in args.sweep.split(",") if n.strip()]
        except ValueError:
            raise OptionError(f"--sweep takes comma-separated whole numbers (e.g. 1,16,256), got {args.sweep!r}.") from None
        for n in args.sweep_lengths:
            check_int(n, "--sweep value", 1)
    if args.assistant:
        if args.no_transformers:
            raise OptionError("--assistant adds a transformers baseline, which --no-transformers turns off; "
                              "drop one of them.")
        check_model_directory(args.assistant, "--assistant model directory")
    from spec.bench.prompts import BenchQuestion, read_bench_prompts

    questions = read_bench_prompts(args.prompts) if args.prompts else [
        BenchQuestion(index, "heldout", [text]) for index, text in enumerate(heldout_prompts())]
    if args.num_prompts is not None and args.num_prompts > len(questions):
        raise OptionError(f"--num-prompts {args.num_prompts} asks for more prompts than there are ({len(questions)}); "
                          f"pass at most {len(questions)}.")
    args.questions = questions[: args.num_prompts or DEFAULT_PROMPTS]
    check_writable_directory(args.out, "--out directory")


def write_report(report, out) -> None:
    """``save_report``: the report replaces ``out``'s as a whole."""
    from spec.bench import save_report

    save_report(report, out)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from spec import AutoregressiveDecoder, SpeculativeDecoder
    from spec.bench import DecoderMethod, TransformersMethod, run_benchmark
    from spec.bench.report import markdown_table
    from spec.errors import ContextLengthError, InputError
    from spec.models import context_length
    from spec.apps.shipped import heldout_prompts, load_shipped, load_shipped_drafter, load_shipped_tree
    from spec.trees import StaticTreeBuilder, chain_tree
    from spec.bench.costs import measure_verify_costs

    from spec.bench.prompts import CategoryRecorder, category_table, expand_turns, first_answer, prompt_categories

    if args.model is None:
        model, tokenizer = load_shipped(dtype=args.dtype, device=args.device)

        def load_heads(name):
            return load_shipped_drafter(name, model), load_shipped_tree(name)

        calibration = [tokenizer(text, return_tensors="pt").input_ids[0] for text in heldout_prompts()[-2:]]
    else:
        from spec.text import TextGenerator
        from spec.text.generator import load_drafter, tree_builder

        plain = TextGenerator.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        model, tokenizer = plain.model, plain.tokenizer

        def load_heads(name):
            drafter, tree = load_drafter(name, model, Path(args.model))
            return drafter, tree_builder(tree, drafter).tree()

        calibration = []
    # Later turns of a Spec-Bench question include the reference (autoregressive, greedy) answers to earlier ones.
    turns = expand_turns(args.questions, tokenizer, first_answer(AutoregressiveDecoder(model), args.max_new_tokens,
                                                                 model.generation_config.eos_token_id))
    prompts = [turn.ids for turn in turns]
    context = context_length(model)
    for index, prompt in enumerate(prompts):
        if prompt.shape[1] == 0:
            raise InputError(f"Prompt {index} tokenizes to no tokens; give prompts with some text.")
        if prompt.shape[1] + args.max_new_tokens > context:
            raise ContextLengthError(f"Prompt {index} ({prompt.shape[1]} tokens) plus --max-new-tokens "
                                     f"{args.max_new_tokens} is over the model's context of {context}; lower "
                                     f"--max-new-tokens to at most {max(context - prompt.shape[1], 0)} or shorten it.")
    methods = [DecoderMethod("autoregressive", AutoregressiveDecoder(model))]
    if not args.no_transformers:
        methods = [TransformersMethod.greedy(model), TransformersMethod.prompt_lookup(model)] + methods
        if args.assistant:
            from transformers import AutoModelForCausalLM

            # Checked above: a local directory with safetensors weights; never unpickled, never fetched.
            assistant = AutoModelForCausalLM.from_pretrained(args.assistant, local_files_only=True,
                                                             use_safetensors=True).eval()
            methods.append(TransformersMethod.assisted(model, assistant))
    kinds = args.verifier_kinds
    calibration = calibration or [prompts[0][0]]
    from spec.drafters import draft_weights_of

    draft_weights: dict[str, str] = {}  # what each method's heads drafted with (--draft-weights), for report.json
    weight_names = args.draft_weight_names
    for name, acceptor_name, builder_name in itertools.product(args.drafter_names, args.acceptor_names,
                                                               args.builder_names):
        acceptor = make_acceptor(acceptor_name, args.temperature)
        cost = builder_name == "cost"
        drafter, tree = compose_drafter(name, load_heads, cost, weight_names[0])
        # Block verification is defined on chains: the same depth, one candidate per depth.
        template = chain_tree(tree.max_depth) if acceptor_name == "block" else tree
        own = drafter.traits.verifier is not None  # Kangaroo brings its own: one row
        # Draft weights are a dimension only for drafters with heads of their own (not n-gram, not self-drafting).
        weight_choices = weight_names if draft_weights_of(drafter) != "none" else weight_names[:1]
        for index, (kind, weights) in enumerate(itertools.product(kinds[:1] if own else kinds, weight_choices)):
            if index:  # a drafter of its own per method: compiling or quantizing one must not change another
                drafter, tree = compose_drafter(name, load_heads, cost, weights)
            verifier = verifier_from_options(model, drafter, kind, args.compile)
            compile_with_verifier(drafter, verifier)
            builder = StaticTreeBuilder(template)
            if cost:
                from spec.bench.costs import cost_aware_builder
                from spec.pipelines.step import Stages

                print(f"measuring this machine's step costs for {name}/{kind}...", flush=True)
                builder = cost_aware_builder(Stages(drafter, builder, verifier, acceptor), template, calibration,
                                             max_new_tokens=min(args.max_new_tokens, 32))
            decoder = SpeculativeDecoder(model, drafter, builder, verifier, acceptor)
            label = name if own or len(kinds) == 1 else f"{name}/{kind}"
            label = label if len(args.acceptor_names) == 1 else f"{label}/{acceptor_name}"
            label = label if len(weight_choices) == 1 else f"{label}/{weights}"
            methods.append(DecoderMethod(label if len(args.builder_names) == 1 else f"{label}/{builder_name}",
                                         decoder))
            draft_weights[methods[-1].name] = draft_weights_of(drafter)
    # The verify-cost curve of the first verifier asked for: the zero-overhead ceiling's denominator.
    sizes = [n for n in (1, 2, 4, 8, 16, 32, 64) if prompts[0].shape[1] + n <= context]
    verifier = verifier_from_options(model, None, kinds[0], args.compile)
    curve = measure_verify_costs(verifier, sizes, prompts[0][0], repeats=3)
    sampling = {} if args.temperature == 0 else {"temperature": args.temperature, "seed": 0}
    recorders = [CategoryRecorder(method, prompt_categories(turns), args.warmup) for method in methods]
    report = run_benchmark(recorders, prompts, args.max_new_tokens, baseline=methods[0].name, repeats=args.repeats,
                           warmup=args.warmup, sampling=sampling, cost_curve=curve, progress=True,
                           profile_overhead=not args.no_profile)
    report.settings["draft_weights"] = draft_weights
    write_report(report, args.out)
    by_category = category_table(recorders, methods[0].name)
    from spec.io import atomic_write_bytes

    atomic_write_bytes(Path(args.out) / "categories.md", by_category.encode())
    print(markdown_table(report))
    print(by_category)
    if args.sweep_lengths:
        from spec.bench.sweep import run_sweep, save_sweep, sweep_table

        sweep = run_sweep(methods, prompts, args.sweep_lengths, context, baseline=methods[0].name,
                          repeats=args.repeats, warmup=args.warmup, progress=True)
        save_sweep(sweep, args.out)
        print(f"### Speedup against max_new_tokens\n\n{sweep_table(sweep)}")
    print(f"written to {args.out}/ (report.json, report.md, categories.md, speedup.png, accepted.png, stages.png)")
    return 0
