"""Rejection sampling vs block verification vs traversal verification on the shipped model (issue #23).

    python docs/bench_acceptors.py [--num-prompts 4] [--max-new-tokens 64] [--temperatures 0.7,1.0]
                                   [--acceptance-prompts 16] [--threads 1] [--out docs/bench/acceptors]

The shipped model's Medusa heads draw sampled candidates (without replacement). Per temperature, one
interleaved ``run_benchmark`` times, on the same prompts and seeds: autoregressive decoding (the speedup
baseline); a chain as deep as the heads with ``RejectionSamplingAcceptor``, ``BlockVerificationAcceptor`` and
``TraversalVerificationAcceptor`` (equal to block verification on a chain: a control); the shipped Medusa tree
with rejection sampling and traversal verification. A 4-prompt run cannot resolve acceptance gains of a few
percent (each rule follows its own random trajectory), so an untimed **same-draft pass** follows: the chain and
the tree decode ``--acceptance-prompts`` prompts with rejection sampling, and at every step each rule's expected
accepted length *on that very draft and verification* is computed exactly over the rule's own coins
(``spec.testing.exact.enumerate_outcomes``); the paired per-step differences give the gain and its standard
error. Prints a markdown table and writes ``acceptors.json`` (rows, settings, command) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from spec import (
    AutoregressiveDecoder,
    BlockVerificationAcceptor,
    MedusaDrafter,
    RejectionSamplingAcceptor,
    SpeculativeDecoder,
    StaticTreeBuilder,
    TraversalVerificationAcceptor,
    chain_tree,
    make_verifier,
)
from spec.bench import DecoderMethod, run_benchmark
from spec.apps.shipped import heldout_prompts, load_shipped, load_shipped_tree, shipped_path
from spec.sampling import target_probs
from spec.testing.exact import enumerate_outcomes

CANDIDATES = "sample_without_replacement"


def decoders(model, chain_depth: int) -> dict[str, SpeculativeDecoder]:
    tree = load_shipped_tree("medusa")
    setups = {
        "medusa/chain/rejection": (chain_tree(chain_depth), RejectionSamplingAcceptor()),
        "medusa/chain/block": (chain_tree(chain_depth), BlockVerificationAcceptor()),
        "medusa/chain/traversal": (chain_tree(chain_depth), TraversalVerificationAcceptor()),
        "medusa/tree/rejection": (tree, RejectionSamplingAcceptor()),
        "medusa/tree/traversal": (tree, TraversalVerificationAcceptor()),
    }
    out = {}
    for name, (shape, acceptor) in setups.items():
        drafter = MedusaDrafter.from_pretrained(shipped_path() / "heads" / "medusa", model, candidates=CANDIDATES)
        out[name] = SpeculativeDecoder(model, drafter, StaticTreeBuilder(shape), make_verifier(model), acceptor)
    return out


class _CoinsOnly:
    """The acceptance coins of ``randomness``; the bonus draw (which cannot change the accepted length) is not
    enumerated."""

    def __init__(self, randomness) -> None:
        self.randomness = randomness

    def bernoulli(self, probability: float) -> bool:
        return self.randomness.bernoulli(probability)

    def categorical(self, weights: torch.Tensor) -> int:
        return 0


def expected_accepted(rule, draft, p_rows: torch.Tensor) -> float:
    """A rule's expected accepted candidates on one draft, exact over its coins."""
    return sum(w * n for w, n in enumerate_outcomes(lambda rnd: rule.walk(draft, p_rows, _CoinsOnly(rnd)).num_accepted))


class SameDraftProbe:
    """An acceptor that accepts with ``primary`` and, on every draft it sees, records each rule's exact
    expected accepted length on that same draft."""

    def __init__(self, primary, rules: dict) -> None:
        self.primary, self.rules = primary, rules
        self.traits = primary.traits
        self.per_step: dict[str, list[float]] = {name: [] for name in rules}

    def accept(self, draft, verification, sampling, generator=None):
        p_rows = target_probs(verification.logits.double(), sampling)
        for name, rule in self.rules.items():
            self.per_step[name].append(expected_accepted(rule, draft, p_rows))
        return self.primary.accept(draft, verification, sampling, generator)


def same_draft_pass(model, shape, rules: dict, prompts, max_new_tokens: int, temperature: float) -> dict:
    """Per rule: mean tokens per step (expected accepted + 1) on the same drafts, and the paired gain over
    rejection sampling with its standard error."""
    probe = SameDraftProbe(RejectionSamplingAcceptor(), rules)
    drafter = MedusaDrafter.from_pretrained(shipped_path() / "heads" / "medusa", model, candidates=CANDIDATES)
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(shape), make_verifier(model), probe)
    for index, prompt in enumerate(prompts):
        decoder.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=1000 + index)
    base = probe.per_step["rejection"]
    out = {}
    for name, values in probe.per_step.items():
        gains = [v - b for v, b in zip(values, base)]
        se = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
        out[name] = {"mean_accepted": 1 + statistics.mean(values), "gain": statistics.mean(gains), "gain_se": se,
                     "steps": len(values)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=4, help="prompts in the timed run")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperatures", default="0.7,1.0")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (medians reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--acceptance-prompts", type=int, default=16, help="prompts in the untimed same-draft pass")
    parser.add_argument("--chain-depth", type=int, default=4, help="chain depth (the shipped Medusa has 4 heads)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--out", default="docs/bench/acceptors")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))

    started = time.perf_counter()
    model, tokenizer = load_shipped()
    texts = heldout_prompts()
    prompts = [tokenizer(t, return_tensors="pt").input_ids for t in texts[: args.num_prompts]]
    many = [tokenizer(t, return_tensors="pt").input_ids for t in texts[: args.acceptance_prompts]]
    pipelines = decoders(model, args.chain_depth)
    methods = [DecoderMethod("autoregressive", AutoregressiveDecoder(model))]
    methods += [DecoderMethod(name, decoder) for name, decoder in pipelines.items()]

    rows = []
    for temperature in (float(t) for t in args.temperatures.split(",")):
        report = run_benchmark(methods, prompts, args.max_new_tokens, baseline="autoregressive",
                               repeats=args.repeats, warmup=args.warmup,
                               sampling={"temperature": temperature, "seed": 0}, profile_overhead=False)
        same = {}
        for shape_name, shape, rules in same_draft_setups(args.chain_depth):
            for rule, result in same_draft_pass(model, shape, rules, many, args.max_new_tokens, temperature).items():
                same[f"medusa/{shape_name}/{rule}"] = result
        for m in report.methods:
            row = {"temperature": temperature, "method": m.name, "tokens_per_second": m.tokens_per_second,
                   "speedup_vs_autoregressive": m.speedup, "mean_accepted_timed": m.mean_accepted,
                   "step_ms": m.step_ms, "mean_tree_size": m.mean_tree_size}
            if m.name in same:
                row.update({f"same_draft_{k}": v for k, v in same[m.name].items()})
            rows.append(row)

    for temperature in sorted({r["temperature"] for r in rows}):  # ratios within the run, same temperature
        base = {r["method"]: r for r in rows if r["temperature"] == temperature}
        for r in rows:
            if r["temperature"] != temperature or r["method"] == "autoregressive":
                continue
            reference = base[r["method"].rsplit("/", 1)[0] + "/rejection"]
            r["same_draft_accepted_vs_rejection"] = (r["same_draft_mean_accepted"]
                                                     / reference["same_draft_mean_accepted"])
            r["timed_accepted_vs_rejection"] = r["mean_accepted_timed"] / reference["mean_accepted_timed"]
            r["tokens_per_second_vs_rejection"] = r["tokens_per_second"] / reference["tokens_per_second"]

    table = markdown(rows, args)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"num_prompts": args.num_prompts, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                "warmup": args.warmup, "acceptance_prompts": args.acceptance_prompts, "chain_depth": args.chain_depth,
                "candidates": CANDIDATES, "torch": torch.__version__, "threads": torch.get_num_threads(),
                "seconds": round(time.perf_counter() - started, 1)}
    (out / "acceptors.json").write_text(json.dumps({"command": command, "settings": settings, "rows": rows},
                                                   indent=2))
    (out / "acceptors.md").write_text(f"```bash\n{command}\n```\n\n{table}\n")
    print(f"written to {out}/acceptors.json and acceptors.md ({settings['seconds']} s)")
    return 0


def same_draft_setups(chain_depth: int):
    rules = {"rejection": RejectionSamplingAcceptor(), "block": BlockVerificationAcceptor(),
             "traversal": TraversalVerificationAcceptor()}
    yield "chain", chain_tree(chain_depth), rules
    yield "tree", load_shipped_tree("medusa"), {k: v for k, v in rules.items() if k != "block"}


def markdown(rows, args) -> str:
    lines = [f"| temperature | method | tokens/s | speedup vs autoregressive | tokens/s vs rejection | mean accepted, "
             f"timed run | vs rejection | mean accepted, same drafts ({args.acceptance_prompts} prompts) | "
             "vs rejection | gain ± s.e. (accepted per step) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "autoregressive":
            lines.append(f"| {r['temperature']} | autoregressive | {r['tokens_per_second']:.1f} | 1.00x | – | "
                         f"{r['mean_accepted_timed']:.2f} | – | – | – | – |")
            continue
        lines.append(f"| {r['temperature']} | {r['method']} | {r['tokens_per_second']:.1f} | "
                     f"{r['speedup_vs_autoregressive']:.2f}x | {r['tokens_per_second_vs_rejection']:.3f} | "
                     f"{r['mean_accepted_timed']:.2f} | {r['timed_accepted_vs_rejection']:.3f} | "
                     f"{r['same_draft_mean_accepted']:.3f} | {r['same_draft_accepted_vs_rejection']:.4f} | "
                     f"{r['same_draft_gain']:+.4f} ± {r['same_draft_gain_se']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
