"""Command-line options shared by ``spec demo`` and ``spec bench``: device, dtype, verifier, compilation."""

from __future__ import annotations

import argparse
from typing import Optional

COMPILE_CHOICES = ("auto", "on", "off")


def add_runtime_arguments(parser: argparse.ArgumentParser, several_verifiers: bool = False) -> None:
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when visible, else CPU), 'cpu' or 'cuda[:N]'")
    parser.add_argument("--dtype", default="auto", help="'auto' (bfloat16, else float16, on CUDA; float32 on CPU), "
                        "or float32, bfloat16, float16, float64")
    kinds = "auto (fast for Llama-family models, else generic), fast (static cache), generic (any transformers LM)"
    if several_verifiers:
        parser.add_argument("--verifiers", default="auto", help="comma-separated verifiers to benchmark, each one a "
                            f"method: {kinds}; a '+compile' suffix compiles that one (e.g. generic,fast,fast+compile)")
    else:
        parser.add_argument("--verifier", default="auto", help=kinds)
    parser.add_argument("--compile", default="auto", choices=COMPILE_CHOICES,
                        help="torch.compile the fast verifier's step: auto = on CUDA only")


def compile_flag(value: str) -> Optional[bool]:
    return {"auto": None, "on": True, "off": False}[value]


def verifier_for(model, drafter, kind: str, compile: str):
    """The drafter's own verifier where it brings one (Kangaroo shares its state), else ``make_verifier``.

    ``kind`` may end in ``+compile``, which overrides ``compile`` for that verifier.
    """
    from spec.verifiers import make_verifier

    own = None if drafter is None else drafter.traits.verifier
    if own is not None:
        return own
    if kind.endswith("+compile"):
        kind, compile = kind.removesuffix("+compile"), "on"
    return make_verifier(model, kind, compile=compile_flag(compile))
