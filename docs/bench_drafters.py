"""Greedy speed of the new drafting options on the shipped model, interleaved in one run per prompt set.

Compares transformers ``generate`` and prompt lookup with: the shipped Medusa and Clover heads, the same
heads projecting onto a reduced draft vocabulary (the K most frequent tokens of the training split),
the n-gram drafter alone, and n-gram lookup merged with Clover's heads. Two prompt sets: the shipped
held-out standard-library snippets, and Python source from an installed third-party package that is
neither in the training corpus nor written here (``--package``, default networkx).

    python docs/bench_drafters.py --out docs/bench/drafters

prints one markdown table per prompt set and writes JSON beside it. Quote ratios from one run.
"""

from __future__ import annotations

import argparse
import importlib
import random
from pathlib import Path

import torch

from spec import GreedyAcceptor, MergedDrafter, NGramDrafter, SpeculativeDecoder, StaticTreeBuilder
from spec.bench.methods import DecoderMethod, TransformersMethod
from spec.bench.report import markdown_table, save_report
from spec.bench.runner import run_benchmark
from spec.drafters.draft_vocab import DraftVocabulary
from spec.apps.shipped import heldout_prompts, load_shipped, load_shipped_drafter, load_shipped_tree
from spec.apps.shipped.corpus import corpus_files, read_corpus
from spec.trees import tree_from_choices, with_chain
from spec.verifiers import make_verifier


def third_party_prompts(package: str, count: int, lines: int = 12, seed: int = 0) -> list[str]:
    """``count`` snippets of ``lines`` lines from random modules of an installed package."""
    root = Path(importlib.import_module(package).__file__).parent
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and p.stat().st_size > 2000)
    rng = random.Random(seed)
    snippets = []
    for path in rng.sample(files, min(len(files), 4 * count)):
        text = path.read_text(errors="replace").splitlines()
        if len(text) < 3 * lines:
            continue
        start = rng.randrange(lines, len(text) - lines)
        snippets.append("\n".join(text[start : start + lines]) + "\n")
        if len(snippets) == count:
            break
    return snippets


def draft_vocabulary(tokenizer, vocab_size: int, size: int, max_files: int = 300) -> DraftVocabulary:
    """The ``size`` most frequent tokens of (part of) the shipped model's training split."""
    files = corpus_files()["train"][:max_files]
    return DraftVocabulary.from_corpus((tokenizer(t).input_ids for t in read_corpus(files)), vocab_size, size)


def merged_template(tree, chain_depth: int):
    """The heads' tree plus a rank-0 chain down to ``chain_depth``: room for a long lookup path."""
    return with_chain(tree, chain_depth)


def methods(model, tokenizer, vocab_sizes: list[int]):
    out = [TransformersMethod.greedy(model), TransformersMethod.prompt_lookup(model)]

    def add(name, drafter, tree):
        decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree), make_verifier(model), GreedyAcceptor())
        out.append(DecoderMethod(name, decoder))

    vocabs = {k: draft_vocabulary(tokenizer, model.config.vocab_size, k) for k in vocab_sizes}
    for heads in ("medusa", "clover"):
        tree = load_shipped_tree(heads)
        add(heads, load_shipped_drafter(heads, model), tree)
        for k, vocab in vocabs.items():
            add(f"{heads}+vocab{k}", load_shipped_drafter(heads, model).use_draft_vocab(vocab), tree)
    add("ngram", NGramDrafter(max_depth=8), tree_from_choices([[0] * d for d in range(1, 9)]))
    clover_tree = load_shipped_tree("clover")
    best_vocab = vocabs[max(vocabs)] if vocabs else None
    clover = load_shipped_drafter("clover", model)
    if best_vocab is not None:
        clover.use_draft_vocab(best_vocab)
    add("ngram+clover", MergedDrafter({"ngram": NGramDrafter(max_depth=8), "clover": clover}),
        merged_template(clover_tree, 8))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--package", default="networkx")
    parser.add_argument("--vocab-sizes", default="512,1024")
    parser.add_argument("--out", default="docs/bench/drafters")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load_shipped()
    sizes = [int(k) for k in args.vocab_sizes.split(",") if k]
    sets = {"heldout": heldout_prompts(limit=args.num_prompts),
            f"third-party ({args.package})": third_party_prompts(args.package, args.num_prompts)}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for label, texts in sets.items():
        prompts = [tokenizer(t, return_tensors="pt").input_ids for t in texts]
        report = run_benchmark(methods(model, tokenizer, sizes), prompts, args.max_new_tokens,
                               baseline="transformers_generate", repeats=args.repeats, warmup=1, progress=True)
        print(f"\n### {label}\n\n{markdown_table(report)}")
        save_report(report, out_dir / label.split()[0], plots=False)


if __name__ == "__main__":
    main()
