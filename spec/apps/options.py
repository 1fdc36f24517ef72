"""Options the commands share (device, dtype, verifier, compilation) and the checks every option goes through:
each check raises ``OptionError`` naming the option and the values it takes, before any work starts."""

from __future__ import annotations

import argparse
import math
from typing import Iterable, Optional, Sequence

COMPILE_CHOICES = ("auto", "on", "off")
#: ``spec.drafters.DRAFT_WEIGHTS``, spelled here so that building the parsers (``--help``) imports no drafter.
DRAFT_WEIGHT_CHOICES = ("auto", "float", "int8")


def add_runtime_arguments(parser: argparse.ArgumentParser, several_verifiers: bool = False,
                          compile_auto: str = "on CUDA only") -> None:
    """``compile_auto``: what ``--compile auto`` means for this command, for its help."""
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
                        help=f"torch.compile the fast verifier's step and the head drafters' draft: auto = {compile_auto}")
    weights_help = ("the weights draft heads draft with: int8 copies (a quarter of the bytes to read; the verifier "
                    "keeps the model's own weights, so output is unchanged) or float as trained; auto = int8 on a "
                    "CPU, float elsewhere")
    if several_verifiers:
        parser.add_argument("--draft-weights", default="auto", help=weights_help + "; comma-separated: each head "
                            "drafter is measured once per choice (e.g. float,int8)")
    else:
        parser.add_argument("--draft-weights", default="auto", choices=DRAFT_WEIGHT_CHOICES, help=weights_help)


def verifier_from_options(model, drafter, kind: str, compile: str):
    """``spec.bench.pairing.verifier_for`` from the options' spellings: ``kind`` may end in ``+compile``, which
    overrides ``--compile`` (auto/on/off) for that verifier."""
    from spec.bench.pairing import verifier_for

    if kind.endswith("+compile"):
        kind, compile = kind.removesuffix("+compile"), "on"
    return verifier_for(model, drafter, kind, {"auto": None, "on": True, "off": False}[compile])


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
    from spec.pipelines.inputs import MAX_SEED

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


def self_drafting(name: str) -> bool:
    """Whether the registered drafter ``name`` drafts with the target's own layers (Kangaroo): its drafts go to its
    own verifier whole, so they can be neither merged with other drafters' nor pruned."""
    from spec.drafters import KangarooDrafter
    from spec.registry import DRAFTERS

    return name in DRAFTERS and issubclass(DRAFTERS[name].drafter, KangarooDrafter)


NGRAM_DEPTH = 8  # deepest lookup path: long enough for code that repeats, short enough to verify cheaply


def compose_drafter(name: str, load_heads, calibrate: bool, draft_weights: str = "float"):
    """``(drafter, tree)`` for a --drafters entry: heads (load_heads(name)), ``ngram``, or ``ngram+NAME``.
    ``calibrate``: wrap a single source in MergedDrafter, whose scores are measured acceptance rates.
    ``draft_weights``: --draft-weights, applied to the heads (``spec.drafters.apply_draft_weights``)."""
    from spec.drafters import apply_draft_weights

    drafter, tree = _compose(name, load_heads, calibrate)
    apply_draft_weights(drafter, draft_weights)
    return drafter, tree


def _compose(name: str, load_heads, calibrate: bool):
    from spec.drafters import MergedDrafter, NGramDrafter
    from spec.trees import chain_tree, with_chain

    if name == "ngram":
        drafter, tree = NGramDrafter(max_depth=NGRAM_DEPTH), chain_tree(NGRAM_DEPTH)
        return (MergedDrafter({"ngram": drafter}) if calibrate else drafter), tree
    if name.startswith("ngram+"):
        heads, tree = load_heads(name.split("+", 1)[1])
        return (MergedDrafter({"ngram": NGramDrafter(max_depth=NGRAM_DEPTH), name.split("+", 1)[1]: heads}),
                with_chain(tree, NGRAM_DEPTH))
    heads, tree = load_heads(name)
    if calibrate and heads.traits.verifier is None:
        return MergedDrafter({name: heads}), tree
    return heads, tree
