"""``spec convert``: published heads in, spec heads out, and trees as serving-engine settings."""

from __future__ import annotations

import argparse
import json

HEAD_FORMATS = ("spec", "medusa", "medusa2", "vllm-medusa", "eagle", "eagle3", "speculators")
#: What --to writes (Medusa-2 full checkpoints are read only: they hold a whole fine-tuned model).
TARGET_FORMATS = ("spec", "medusa", "vllm-medusa", "eagle", "eagle3", "speculators")


def add_parser(sub) -> None:
    convert = sub.add_parser(
        "convert", help="convert draft heads between spec and published layouts; trees to engine settings",
        description="Convert draft heads between spec's checkpoints and the published layouts (Medusa-1, "
        "Medusa-2 full checkpoints, vLLM's Medusa, EAGLE-1, EAGLE-3 and the speculators format vLLM serves), bound "
        "to the base model given; or print a tree as the settings of Medusa, vLLM, SGLang or TensorRT-LLM. See "
        "docs/interop.md.")
    actions = convert.add_subparsers(dest="action", required=True)
    heads = actions.add_parser(
        "heads", help="heads from one layout to another, bound to --model",
        description="Read heads in --from's layout, check them against --model (hidden size, vocabulary, "
        "Medusa-2's lm_head) and write them in --to's. Pickled inputs (.pt/.bin) are read only through torch's "
        "restricted loader; nothing is ever written as a pickle.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    heads.add_argument("source", help="the heads' directory")
    heads.add_argument("out", help="the directory to write (replaced as a whole)")
    heads.add_argument("--from", dest="source_format", choices=("auto",) + HEAD_FORMATS, default="auto",
                       help="the source layout (auto: told from its files)")
    heads.add_argument("--to", dest="target_format", choices=TARGET_FORMATS, default="spec",
                       help="the layout to write (spec: a spec checkpoint recording the model's fingerprint)")
    heads.add_argument("--model", default="spec-py-tiny", help="the base model: a shipped model's name or a "
                       "Hugging Face model directory")
    heads.add_argument("--verifier", default=None, help="the base model's name or path recorded in a speculators "
                       "config (speculators_config.verifier.name_or_path; default: --model's directory)")
    heads.add_argument("--layer-ids", dest="id_convention", choices=("boundary", "output"), default="boundary",
                       help="how an EAGLE-3 config (--from/--to eagle3) counts its aux layer ids: boundary (k: the "
                       "stream after k layers; vLLM, speculators) or output (k: layer k's output; SGLang/SpecForge)")
    heads.set_defaults(func=_heads)
    tree = actions.add_parser(
        "tree", help="a tree as an engine's settings",
        description="Print the settings that give a serving engine this tree, and the command line that uses them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tree.add_argument("tree", help="a tree JSON file (spec tree optimise), or a bare Medusa choices list")
    tree.add_argument("--to", dest="engine", required=True,
                      choices=("medusa", "vllm", "sglang", "trtllm-medusa", "trtllm-eagle"), help="the engine")
    tree.add_argument("--heads", default="<heads>", help="where the engine finds the exported heads")
    tree.add_argument("--method", default="medusa", choices=("medusa", "eagle", "eagle3"),
                      help="the heads' kind, as vLLM names it (its tree attention serves eagle/eagle3 heads)")
    tree.set_defaults(func=_tree)


def _load_model(name_or_path: str):
    from transformers import AutoModelForCausalLM

    from spec.apps.shipped import resolve_model_path
    from spec.io.files import check_model_directory

    directory = check_model_directory(resolve_model_path(name_or_path), "--model directory")
    return AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, use_safetensors=True).eval()


def _heads(args: argparse.Namespace) -> int:
    from spec.drafters import Eagle3Drafter, EagleDrafter, MedusaDrafter
    from spec.errors import CheckpointError, OptionError
    from spec.interop import (
        detect_head_format,
        export_eagle,
        export_eagle3,
        export_medusa,
        export_speculators,
        import_eagle,
        import_eagle3,
        import_medusa,
        import_speculators,
    )
    from spec.io import check_writable_directory, read_json
    from spec.registry import DRAFTERS

    check_writable_directory(args.out, "output directory")
    model = _load_model(args.model)
    source = args.source_format
    if source == "auto":
        detected = detect_head_format(args.source)
        source = "auto" if detected == "medusa-auto" else detected
    if source == "spec":
        kind = read_json(f"{args.source}/config.json", "heads config", CheckpointError, CheckpointError).get("drafter_type")
        if kind not in DRAFTERS:
            raise CheckpointError(f"{args.source} holds no spec drafter checkpoint (drafter_type {kind!r}).")
        drafter = DRAFTERS[kind].drafter.from_pretrained(args.source, model)
    elif source == "eagle":
        drafter = import_eagle(args.source, model)
    elif source == "eagle3":
        drafter = import_eagle3(args.source, model, id_convention=args.id_convention)
    elif source == "speculators":
        drafter = import_speculators(args.source, model)
    else:
        drafter = import_medusa(args.source, model, layout=source)
    target = args.target_format
    if target == "spec":
        drafter.save_pretrained(args.out)
    elif target == "speculators":
        if not isinstance(drafter, EagleDrafter):  # Eagle3Drafter is one too
            raise OptionError(f"--to speculators writes EAGLE or EAGLE-3 heads; {args.source} holds "
                              f"{drafter.drafter_type} heads.")
        export_speculators(drafter, args.out, verifier=args.verifier)
    elif target == "eagle3":
        if not isinstance(drafter, Eagle3Drafter):
            raise OptionError(f"--to eagle3 writes EAGLE-3 heads; {args.source} holds {drafter.drafter_type} heads.")
        export_eagle3(drafter, args.out, id_convention=args.id_convention)
    elif target == "eagle":
        if not isinstance(drafter, EagleDrafter) or isinstance(drafter, Eagle3Drafter):
            raise OptionError(f"--to eagle writes EAGLE-1 heads; {args.source} holds {drafter.drafter_type} heads.")
        export_eagle(drafter, args.out)
    else:
        if not isinstance(drafter, MedusaDrafter):
            raise OptionError(f"--to {target} writes Medusa heads; {args.source} holds "
                              f"{drafter.drafter_type} heads.")
        export_medusa(drafter, args.out, layout=target)
    print(f"wrote {drafter.drafter_type} heads as {target} to {args.out}")
    return 0


def _tree(args: argparse.Namespace) -> int:
    from spec.interop import tree_for_engine
    from spec.trees import load_tree

    tree, _ = load_tree(args.tree)
    settings = tree_for_engine(tree, args.engine, args.heads, args.method)
    print(json.dumps(settings["config"], indent=2))
    print(settings["command"])
    if settings.get("note"):
        print(f"note: {settings['note']}")
    return 0
