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
    from spec.apps import bench_cli, convert_cli, demo, generate_cli, train_cli, trees_cli

    for command in (demo, generate_cli, train_cli, trees_cli, bench_cli, convert_cli):  # `spec --help`'s order
        command.add_parser(sub)
    build = sub.add_parser("build-model", add_help=False,
                           help="rebuild the shipped model from scratch: corpus, tokenizer, training, heads "
                           "(resumable; `spec build-model --help` for options)")
    build.add_argument("rest", nargs=argparse.REMAINDER)
    build.set_defaults(func=lambda args: _build_model(args.rest))
    return parser


def _build_model(rest: list[str]) -> int:
    from spec.apps.shipped.build import main as build_main

    return build_main(rest)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns its exit status. A refusal (any ``SpecError``) prints
    ``spec <command>: error: <message>`` on stderr, with no traceback, and returns 2. An option argparse
    itself rejects (not a number, an unknown choice) exits through argparse: SystemExit(2), usage on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from spec.errors import SpecError

    try:
        if argv[:1] == ["build-model"]:  # its own parser owns every option, --help included
            return _build_model(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SpecError as error:  # a refusal that names its fix: the message, not a traceback
        print(f"spec {argv[0] if argv else ''}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
