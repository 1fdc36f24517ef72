"""The ``spec`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spec",
        description="Lossless speculative decoding with draft heads. "
        "Compose decoders in Python (see README.md); this command runs demos and tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from spec.demo import add_parser as add_demo_parser

    add_demo_parser(sub)
    from spec.training.cli import add_parser as add_train_parser

    add_train_parser(sub)
    from spec.trees.cli import add_parser as add_tree_parser

    add_tree_parser(sub)
    from spec.bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)
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
    from spec.errors import SpecError

    try:
        return args.func(args)
    except SpecError as error:  # a refusal that names its fix: the message, not a traceback
        print(f"spec {argv[0] if argv else ''}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
