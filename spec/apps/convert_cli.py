"""``spec convert``: published heads in, spec heads out, and trees as serving-engine settings."""

from __future__ import annotations

import argparse
import json

HEAD_FORMATS = ("spec", "medusa", "medusa2", "vllm-medusa", "eagle")


def add_parser(sub) -> None:
    convert = sub.add_parser(
        "convert", help="convert draft heads between spec and published layouts; trees to engine settings",
        description="Convert Medusa heads between spec's checkpoints and the published layouts (Medusa-1, "
        "Medusa-2 full checkpoints, vLLM's Medusa) and EAGLE-1 heads, bound to the base model given; or print a tree as the "
        "settings of Medusa, vLLM, SGLang or TensorRT-LLM. See docs/interop.md.")
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
    heads.add_argument("--to", dest="target_format", choices=("spec", "medusa", "vllm-medusa", "eagle"), default="spec",
                       help="the layout to write (spec: a spec checkpoint recording the model's fingerprint)")
    heads.add_argument("--model", default="spec-py-tiny", help="the base model: a shipped model's name or a "
                       "Hugging Face model directory")
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
    from spec.drafters import EagleDrafter, MedusaDrafter
    from spec.errors import CheckpointError, OptionError
    from spec.interop import export_medusa, import_medusa
    from spec.interop.eagle import export_eagle, import_eagle
    from spec.io import check_writable_directory, read_json
    from spec.registry import DRAFTERS

    check_writable_directory(args.out, "output directory")
    model = _load_model(args.model)
    if args.source_format == "spec":
        kind = read_json(f"{args.source}/config.json", "heads config", CheckpointError, CheckpointError).get("drafter_type")
        if kind not in DRAFTERS:
            raise CheckpointError(f"{args.source} holds no spec drafter checkpoint (drafter_type {kind!r}).")
        drafter = DRAFTERS[kind].drafter.from_pretrained(args.source, model)
    elif args.source_format == "eagle":
        drafter = import_eagle(args.source, model)
    else:
        drafter = import_medusa(args.source, model, layout=args.source_format)
    if args.target_format == "spec":
        drafter.save_pretrained(args.out)
    elif args.target_format == "eagle":
        if not isinstance(drafter, EagleDrafter):
            raise OptionError(f"--to eagle writes EAGLE-1 heads; {args.source} holds {drafter.drafter_type} heads.")
        export_eagle(drafter, args.out)
    else:
        if not isinstance(drafter, MedusaDrafter):
            raise OptionError(f"--to {args.target_format} writes Medusa heads; {args.source} holds "
                              f"{drafter.drafter_type} heads.")
        export_medusa(drafter, args.out, layout=args.target_format)
    print(f"wrote {drafter.drafter_type} heads as {args.target_format} to {args.out}")
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
