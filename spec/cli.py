"""The ``spec`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def _demo(args: argparse.Namespace) -> int:
    import torch

    from spec import (
        AutoregressiveDecoder,
        GreedyAcceptor,
        MedusaDrafter,
        SpeculativeDecoder,
        StaticTreeBuilder,
        TreeAttentionVerifier,
        tree_from_choices,
    )
    from spec.testing.drafters import OracleDrafter
    from spec.testing.models import tiny_model

    torch.manual_seed(args.seed)
    model = tiny_model(args.arch, seed=args.seed, dtype=torch.float32, vocab_size=256, hidden_size=64)
    prompt = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(args.seed))
    tree = tree_from_choices(json.loads(args.tree))
    baseline = AutoregressiveDecoder(model).generate(prompt, max_new_tokens=args.max_new_tokens)
    if args.drafter == "oracle":
        drafter = OracleDrafter(baseline.sequences, 256, accuracy=0.8, max_depth=tree.max_depth, seed=args.seed)
    else:
        drafter = MedusaDrafter.from_model(model, num_heads=tree.max_depth, seed=args.seed)
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree), TreeAttentionVerifier(model), GreedyAcceptor())
    result = decoder.generate(prompt, max_new_tokens=args.max_new_tokens)
    same = torch.equal(result.sequences, baseline.sequences)
    print("No trained model ships yet: this demo runs a randomly initialised tiny "
          f"{args.arch} model, so token ids are printed, not text.")
    print(f"prompt          : {prompt[0].tolist()}")
    print(f"autoregressive  : {baseline.new_tokens.tolist()}")
    print(f"speculative     : {result.new_tokens.tolist()}")
    print(f"identical       : {same}")
    print(f"drafter / tree  : {args.drafter} / {tree.num_nodes} nodes, depth {tree.max_depth}")
    print(f"mean accepted length (tokens per verify step): {result.mean_accepted_length:.2f}")
    print(f"verify steps    : {len(result.steps)} (autoregressive: {len(baseline.steps)})")
    print(f"tokens/s        : speculative {result.tokens_per_second:.1f}, autoregressive {baseline.tokens_per_second:.1f}")
    return 0 if same else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spec",
        description="Lossless speculative decoding with draft heads. "
        "Compose decoders in Python (see README.md); this command runs demos and tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="decode with and without speculation and show both outputs are identical",
        description="Generate greedily with the autoregressive baseline and with a speculative decoder "
        "(drafter + static tree + tree-attention verifier + greedy acceptor), and compare.",
    )
    demo.add_argument("--arch", default="llama", choices=["llama", "qwen2", "mistral", "gpt2"],
                      help="architecture of the tiny random model (default: llama)")
    demo.add_argument("--drafter", default="oracle", choices=["oracle", "medusa"],
                      help="'oracle' knows the greedy continuation and is right 80%% of the time, so drafts get "
                      "accepted; 'medusa' uses untrained Medusa heads (rarely accepted on a random model)")
    demo.add_argument("--tree", default="[[0], [1], [0, 0], [0, 1], [0, 0, 0], [0, 0, 0, 0]]",
                      help="candidate tree as Medusa choices, JSON (default: %(default)s)")
    demo.add_argument("--max-new-tokens", type=int, default=48, help="tokens to generate (default: 48)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the model, prompt and drafter (default: 0)")
    demo.set_defaults(func=_demo)
    from spec.training.cli import add_parser as add_train_parser

    add_train_parser(sub)
    from spec.trees.cli import add_parser as add_tree_parser

    add_tree_parser(sub)
    build = sub.add_parser("build-model", add_help=False,
                           help="rebuild the shipped model from scratch: corpus, tokenizer, training, heads "
                           "(resumable; `spec build-model --help` for options)")
    build.add_argument("rest", nargs=argparse.REMAINDER)
    build.set_defaults(func=lambda args: _build_model(args.rest))
    return parser


def _build_model(rest: list[str]) -> int:
    from spec.models.shipped.build import main as build_main

    return build_main(rest)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build-model"]:  # its own parser owns every option, --help included
        return _build_model(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
