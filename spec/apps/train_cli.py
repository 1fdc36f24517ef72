"""``spec train``: train draft heads for a model from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spec.registry import DRAFTERS


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "train",
        help="train draft heads for a model",
        description="Train draft heads on text with the recipes of their papers. Resumes from the last "
        "checkpoint in --out unless --no-resume. Runs under `accelerate launch` unchanged for several GPUs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--drafter", required=True, choices=sorted(DRAFTERS),
                        help="which drafter's heads to train")
    parser.add_argument("--model", required=True,
                        help="a transformers model directory with its tokenizer")
    parser.add_argument("--data", required=True,
                        help="training text: a .txt/.py file, a .jsonl file with a 'text' field, or a directory of "
                        "them; or conversations: .jsonl with 'messages' (role/content) or ShareGPT 'conversations' "
                        "(from/value), rendered with the tokenizer's chat template, trained on the assistant's "
                        "tokens only; for --recipe self-distill these are prompts the model continues itself")
    parser.add_argument("--data-format", default="auto", choices=["auto", "text", "chat"],
                        help="auto: conversations if the first .jsonl record has 'messages' or 'conversations', "
                        "else text")
    parser.add_argument("--out", required=True, help="output directory: checkpoints, log.jsonl, plots, heads/")
    parser.add_argument("--recipe", default=None,
                        choices=sorted({r for entry in DRAFTERS.values() for r in entry.recipes}),
                        help="; ".join(f"{name}: {recipe.summary}" for entry in DRAFTERS.values()
                                       for name, recipe in entry.recipes.items()))
    parser.add_argument("--num-heads", type=int, default=4, help="draft heads (tree depth they can fill)")
    parser.add_argument("--num-layers", type=int, default=1, help="ResBlocks per head")
    parser.add_argument("--exit-layer", type=int, default=2, help="kangaroo: shallow layers the adapter reads")
    parser.add_argument("--decay", type=float, default=0.8, help="weight of head k's loss is decay**k (Medusa)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per micro-batch, over all processes (each takes its share)")
    parser.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--block-size", type=int, default=256, help="tokens per training block")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (heads get 4x under medusa2)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"],
                        help="autocast mode (fp16 needs a CUDA GPU; bf16 also runs on the CPU)")
    parser.add_argument("--sharding", default="no", choices=["no", "fsdp"],
                        help="fsdp: shard the model and heads over the processes with FSDP2 (recipe medusa2, under "
                        "accelerate launch or torchrun; an accelerate FSDP config asks for it too)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    parser.add_argument("--heldout-fraction", type=float, default=0.05, help="share of blocks held out")
    parser.add_argument("--distill-tokens", type=int, default=128, help="self-distill: tokens generated per prompt")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order")
    parser.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out and start over")
    parser.set_defaults(func=run)


DATA_SUFFIXES = (".txt", ".py", ".jsonl")


def check_arguments(args: argparse.Namespace) -> Path:
    """Every option before any model or data is loaded; returns the model directory.

    ``--model`` must be a shipped model's name or a local transformers directory with safetensors weights
    and a tokenizer: spec never fetches models from a hub and never unpickles (``.bin`` weights are refused).
    """
    from spec.apps.options import check_int, check_real, check_seed
    from spec.errors import ConfigurationError, OptionError, PathError
    from spec.io import check_model_directory, check_writable_directory, read_json
    from spec.apps.shipped import resolve_model_path

    entry = DRAFTERS[args.drafter]
    args.recipe = args.recipe or next(iter(entry.recipes))
    if args.recipe not in entry.recipes:
        raise ConfigurationError(f"--recipe {args.recipe} does not apply to {args.drafter}; choose from "
                                 f"{tuple(entry.recipes)}.")
    recipe = entry.recipes[args.recipe]
    check_int(args.num_heads, "--num-heads", 1)
    check_int(args.num_layers, "--num-layers", recipe.min_num_layers,
              hint=f" ({recipe.min_num_layers_why})" if recipe.min_num_layers_why else "")
    check_int(args.steps, "--steps", 1)
    check_int(args.batch_size, "--batch-size", 1)
    check_int(args.grad_accumulation, "--grad-accumulation", 1)
    check_int(args.block_size, "--block-size", 2)
    check_int(args.checkpoint_every, "--checkpoint-every", 1)
    check_int(args.eval_every, "--eval-every", 1)
    check_int(args.distill_tokens, "--distill-tokens", 1)
    check_seed(args.seed)
    check_real(args.decay, "--decay", 0.0, 1.0, low_open=True)
    check_real(args.lr, "--lr", 0.0, low_open=True)
    check_real(args.heldout_fraction, "--heldout-fraction", 0.0, 1.0, low_open=True, high_open=True)
    model_dir = check_model_directory(resolve_model_path(args.model), "--model directory", need_tokenizer=True)
    config = read_json(model_dir / "config.json", "model config", PathError, ConfigurationError)
    config = config if isinstance(config, dict) else {}
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    if entry.reads_exit_layer:
        check_int(args.exit_layer, "--exit-layer", 1, layers - 1 if isinstance(layers, int) and layers > 1 else None,
                  hint=f" (the model has {layers} layers)" if isinstance(layers, int) else "")
    context = config.get("max_position_embeddings", config.get("n_positions"))
    if isinstance(context, int) and not recipe.own_text and args.block_size > context:
        raise OptionError(f"--block-size {args.block_size} is over the model's context of {context}; use at most "
                          f"{context}.")
    data = Path(args.data)
    if not data.exists():
        raise PathError(f"--data {data} does not exist; give a .txt/.py/.jsonl file or a directory of them.")
    if data.is_dir():
        if not any(p.suffix in DATA_SUFFIXES for p in data.rglob("*")):
            raise PathError(f"--data {data} holds no .txt, .py or .jsonl files; put the training text there.")
    elif data.suffix not in DATA_SUFFIXES or (args.data_format == "chat" and data.suffix != ".jsonl"):
        raise OptionError(f"--data {data} is a {data.suffix or 'suffix-less'} file; give a .txt or .py file (read as "
                          "text), a .jsonl file (a 'text' field, or 'messages'/'conversations' per line), or a "
                          "directory of them" + ("; --data-format chat reads .jsonl only." if args.data_format == "chat"
                                                 else "."))
    if args.sharding == "fsdp" and not recipe.trains_model:
        raise OptionError(f"--sharding fsdp is for recipes that train the model itself (medusa2); {args.recipe} "
                          "trains draft modules on a frozen model, which every process holds whole: drop --sharding.")
    if args.mixed_precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise OptionError("--mixed-precision fp16 needs a CUDA GPU (on the CPU it would silently train in "
                              "float32); use bf16 or no.")
    check_writable_directory(args.out, "--out directory", replaced=False)
    return model_dir


def run(args: argparse.Namespace) -> int:
    model_dir = check_arguments(args)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spec.errors import ConfigurationError
    from spec.models import context_length
    from spec.registry import HeadOptions
    from spec.training import (TokenBlocks, TrainConfig, conversation_blocks, is_conversation_data,
                               iter_conversations, iter_texts, pack_blocks, train)
    from spec.training.distill import generate_own_blocks, generate_own_conversations
    from spec.training.plots import plot_head_accuracy

    torch.manual_seed(args.seed)
    # Checked above: a local directory with safetensors weights (never fetched, never unpickled).
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    entry = DRAFTERS[args.drafter]
    recipe = entry.recipes[args.recipe]
    block_size = args.block_size
    chat = args.data_format == "chat" or (args.data_format == "auto" and is_conversation_data(args.data))
    blocks: torch.Tensor | TokenBlocks
    if recipe.own_text and chat:  # the model writes each conversation's first reply itself
        blocks = generate_own_conversations(model.eval(), tokenizer, iter_conversations(args.data),
                                            args.distill_tokens, block_size, seed=args.seed,
                                            work_dir=Path(args.out) / "distill", progress=True)
    elif recipe.own_text:
        prompts = pack_blocks(iter_texts(args.data), tokenizer, 15, context=context_length(model))
        blocks = generate_own_blocks(model.eval(), prompts, args.distill_tokens, seed=args.seed,
                                     work_dir=Path(args.out) / "distill", progress=True)
    elif chat:
        blocks = conversation_blocks(iter_conversations(args.data), tokenizer, block_size,
                                     context=context_length(model))
    else:
        blocks = pack_blocks(iter_texts(args.data), tokenizer, block_size, context=context_length(model))
    heldout_count = max(1, int(blocks.shape[0] * args.heldout_fraction))
    train_blocks, heldout = blocks[:-heldout_count], blocks[-heldout_count:]
    if train_blocks.shape[0] == 0:
        raise ConfigurationError("All blocks were held out; give more data or a smaller --heldout-fraction.")
    options = dict(num_heads=args.num_heads, decay=args.decay, seed=args.seed,
                   num_layers=args.num_layers if recipe.num_layers is None else recipe.num_layers)
    if entry.reads_exit_layer:  # the other drafters ignore --exit-layer, whatever its value
        options["exit_layer"] = args.exit_layer
    drafter, objective = entry.build(model, args.recipe, HeadOptions(**options))
    if recipe.prepare is not None:  # e.g. EAGLE-3's draft vocabulary, by token frequency on the training split
        # On conversations, the frequencies of the tokens the drafter will be asked for: the assistant's.
        recipe.prepare(drafter, [train_blocks.tokens[train_blocks.loss_mask]]
                       if isinstance(train_blocks, TokenBlocks) else train_blocks)
    out = Path(args.out)
    config = TrainConfig(out_dir=str(out), steps=args.steps, batch_size=args.batch_size,
                         grad_accumulation=args.grad_accumulation, lr=args.lr, mixed_precision=args.mixed_precision,
                         checkpoint_every=args.checkpoint_every, eval_every=args.eval_every, seed=args.seed,
                         sharding=args.sharding)
    start_metrics = objective.evaluate(objective.trainable(), heldout)
    result = train(objective, train_blocks, config, eval_blocks=heldout, resume=not args.no_resume,
                   run={"drafter": args.drafter, "recipe": args.recipe, "model": str(model_dir), **options,
                        # only for conversations, so a text run started before this option resumes unchanged
                        **({"data_format": "chat"} if chat else {})})
    from spec.training.sharding import resolve_sharding

    if resolve_sharding(args.sharding) == "fsdp":
        # The trained module is sharded over the processes; the final checkpoint holds it whole. The main
        # process alone rebuilds it unsharded from there and writes the heads, model and statistics.
        from accelerate import PartialState

        from spec.training.checkpoint import load_trained_weights

        if not PartialState().is_main_process:
            return 0
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
        drafter, objective = entry.build(model, args.recipe, HeadOptions(**options))
        load_trained_weights(out, objective.trainable())
    model.eval()
    drafter.save_pretrained(out / "heads")
    if recipe.trains_model:
        model.save_pretrained(out / "model", safe_serialization=True)
        tokenizer.save_pretrained(out / "model")
    plot_head_accuracy(result.log_path, out / "head_accuracy.png")
    from spec.models import ModelFingerprint
    from spec.training.evaluation import acceptance_table

    stats = acceptance_table(objective, objective.trainable(), heldout, width=4, name=f"{args.drafter}/{args.recipe}",
                             model_fingerprint=ModelFingerprint.of(model).to_dict())
    stats.save(out / "acceptance_stats.json")
    summary = {"before": start_metrics, "after": result.final_metrics, "heads": str(out / "heads")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0
