"""The ``spec`` command line."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Iterable, Optional, Sequence

#: torch generators take a 64-bit seed.
MAX_SEED = 2**64


# ---- option checks shared by the commands: each raises OptionError naming the option and what it takes ----
def check_int(value: int, option: str, minimum: int, maximum: Optional[int] = None, hint: str = "") -> int:
    from spec.errors import OptionError

    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise OptionError(f"{option} must be an integer {bounds}, got {value}{hint}.")
    return value


def check_real(value: float, option: str, low: float, high: float = math.inf, low_open: bool = False,
               high_open: bool = False, hint: str = "") -> float:
    from spec.errors import OptionError

    if (not math.isfinite(value) or value < low or value > high or (low_open and value == low)
            or (high_open and value == high)):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
        raise OptionError(f"{option} must be a finite number in {bounds}, got {value}{hint}.")
    return value


def check_temperature(value: float, device: str, dtype: str, option: str = "--temperature") -> float:
    """0 (greedy) or a temperature the logits of a model in ``dtype`` survive being divided by."""
    import torch

    from spec.errors import OptionError
    from spec.models.placement import resolve_placement
    from spec.pipelines.inputs import LOGIT_BOUND

    check_real(value, option, 0.0, hint=" (0 = greedy)")
    _, resolved = resolve_placement(device, dtype)
    smallest = LOGIT_BOUND / torch.finfo(resolved).max
    if 0 < value < smallest:
        raise OptionError(f"{option} {value} is so small that {resolved} logits divided by it overflow (the "
                          f"smallest usable is {smallest:.3g}); use {option} 0 for greedy decoding.")
    return value


def check_seed(value: int, option: str = "--seed") -> int:
    return check_int(value, option, 0, MAX_SEED - 1, hint=" (torch generators take a 64-bit seed)")


def check_names(values: Iterable[str], option: str, allowed: Sequence[str], what: str) -> list[str]:
    """Comma-split option values, each one of ``allowed``; at least one."""
    from spec.errors import OptionError

    names = list(values)
    if not names:
        raise OptionError(f"{option} names no {what}; give at least one of {', '.join(allowed)}.")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise OptionError(f"{option}: unknown {what} {', '.join(map(repr, unknown))}; choose from "
                          f"{', '.join(allowed) or 'none (nothing is installed)'}.")
    return names


def check_verifier_kinds(text: str, option: str, several: bool) -> list[str]:
    """``auto``/``fast``/``generic``, each optionally with ``+compile``; comma-separated when ``several``."""
    from spec.verifiers import VERIFIER_KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()] if several else [text]
    allowed = list(VERIFIER_KINDS) + [f"{k}+compile" for k in VERIFIER_KINDS]
    return check_names(kinds, option, allowed, "verifier")


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
