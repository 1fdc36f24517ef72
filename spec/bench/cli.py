"""``spec bench``: measure pipelines side by side with transformers on the same prompts."""

from __future__ import annotations

import argparse
import json

from spec.runtime_options import add_runtime_arguments, verifier_for


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
    bench.add_argument("--drafters", default="medusa", help="comma-separated shipped drafters to benchmark")
    bench.add_argument("--prompts", default=None, help="JSONL of prompts (field 'prompt' or 'text'); default: the "
                       "shipped held-out snippets")
    bench.add_argument("--num-prompts", type=int, default=8, help="how many prompts to use")
    bench.add_argument("--max-new-tokens", type=int, default=96, help="tokens per prompt")
    bench.add_argument("--repeats", type=int, default=3, help="timed repeats (medians are reported)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds")
    bench.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 uses rejection sampling")
    bench.add_argument("--no-transformers", action="store_true", help="skip the transformers baselines")
    bench.add_argument("--assistant", default=None, help="a smaller transformers model directory (same tokenizer): "
                       "adds transformers assisted generation with it as the draft model")
    bench.add_argument("--no-profile", action="store_true", help="skip the extra pass that measures the share of "
                       "each step outside network forward passes")
    add_runtime_arguments(bench, several_verifiers=True)
    bench.add_argument("--out", default="bench-out", help="output directory")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spec import AutoregressiveDecoder, GreedyAcceptor, RejectionSamplingAcceptor, SpeculativeDecoder
    from spec.bench import DecoderMethod, TransformersMethod, run_benchmark, save_report
    from spec.bench.report import markdown_table
    from spec.models.shipped import heldout_prompts, load_shipped, load_shipped_drafter, load_shipped_tree
    from spec.trees import StaticTreeBuilder
    from spec.trees.measure import measure_verify_costs

    model, tokenizer = load_shipped(dtype=args.dtype, device=args.device)
    if args.prompts:
        with open(args.prompts) as handle:
            texts = [r.get("prompt", r.get("text")) for r in map(json.loads, filter(str.strip, handle))]
    else:
        texts = heldout_prompts()
    prompts = [tokenizer(t, return_tensors="pt").input_ids for t in texts[: args.num_prompts]]
    methods = [DecoderMethod("autoregressive", AutoregressiveDecoder(model))]
    if not args.no_transformers:
        methods = [TransformersMethod.greedy(model), TransformersMethod.prompt_lookup(model)] + methods
        if args.assistant:
            from transformers import AutoModelForCausalLM

            assistant = AutoModelForCausalLM.from_pretrained(args.assistant, local_files_only=True).eval()
            methods.append(TransformersMethod.assisted(model, assistant))
    kinds = [k for k in args.verifiers.split(",") if k]
    for name in filter(None, args.drafters.split(",")):
        acceptor = GreedyAcceptor() if args.temperature == 0 else RejectionSamplingAcceptor()
        drafter = load_shipped_drafter(name, model)
        builder = StaticTreeBuilder(load_shipped_tree(name))
        own = drafter.traits.verifier is not None  # Kangaroo brings its own: one row
        for kind in kinds[:1] if own else kinds:
            decoder = SpeculativeDecoder(model, drafter, builder, verifier_for(model, drafter, kind, args.compile),
                                         acceptor)
            methods.append(DecoderMethod(name if own or len(kinds) == 1 else f"{name}/{kind}", decoder))
    # The verify-cost curve of the first verifier asked for: the zero-overhead ceiling's denominator.
    curve = measure_verify_costs(verifier_for(model, None, kinds[0] if kinds else "auto", args.compile),
                                 [1, 2, 4, 8, 16, 32, 64], prompts[0][0], repeats=3)
    sampling = {} if args.temperature == 0 else {"temperature": args.temperature, "seed": 0}
    report = run_benchmark(methods, prompts, args.max_new_tokens, baseline=methods[0].name, repeats=args.repeats,
                           warmup=args.warmup, sampling=sampling, cost_curve=curve, progress=True,
                           profile_overhead=not args.no_profile)
    save_report(report, args.out)
    print(markdown_table(report))
    print(f"written to {args.out}/ (report.json, report.md, speedup.png, accepted.png, stages.png)")
    return 0
