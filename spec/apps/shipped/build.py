"""Rebuild the shipped model from scratch: corpus, tokenizer, token blocks, training, export.

    spec build-model --work build/shipped [--steps 1200] [--threads 2]

Every stage is skipped when its output exists, and training resumes from its last
checkpoint, so the command can be killed and re-run at any point without losing
finished work. ``--export`` writes the model into the package (``spec/apps/shipped/
<name>/``) so ``load_shipped`` finds it offline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from spec.apps.shipped.corpus import corpus_files, read_corpus, stdlib_root
from spec.registry import DRAFTERS

NAME = "spec-py-tiny"
PACKAGE_DIR = Path(__file__).parent / NAME
BLOCK_SIZE = 256
VOCAB_SIZE = 4096


def model_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=320, intermediate_size=896, num_hidden_layers=6,
        num_attention_heads=5, num_key_value_heads=5, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        rope_theta=10000.0, architectures=["LlamaForCausalLM"],
    )


def build_tokenizer(work: Path):
    from transformers import AutoTokenizer

    from spec.apps.shipped.tokenizer import train_tokenizer

    path = work / "tokenizer"
    if not (path / "tokenizer.json").exists():
        print("[1/4] training the BPE tokenizer on the train split...", flush=True)
        tokenizer = train_tokenizer(read_corpus(corpus_files()["train"]), VOCAB_SIZE)
        tokenizer.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def build_blocks(work: Path, tokenizer) -> dict[str, torch.Tensor]:
    from spec.training import pack_blocks

    path = work / "blocks.safetensors"
    if not path.exists():
        print("[2/4] tokenising and packing the corpus...", flush=True)
        split = corpus_files()
        blocks = {name: pack_blocks(read_corpus(files), tokenizer, BLOCK_SIZE) for name, files in split.items()}
        save_file(blocks, path)
        manifest = {name: [p.relative_to(stdlib_root()).as_posix() for p in files] for name, files in split.items()}
        (work / "split.json").write_text(json.dumps(manifest, indent=1))
    return load_file(path)


def train_model(work: Path, blocks: dict[str, torch.Tensor], steps: int, batch_size: int, lr: float):
    from transformers import LlamaForCausalLM

    from spec.training import LanguageModelObjective, TrainConfig, train

    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config())
    print(f"[3/4] training a {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter Llama on "
          f"{blocks['train'].numel() / 1e6:.1f}M tokens; checkpoints in {work / 'run'}", flush=True)
    config = TrainConfig(out_dir=str(work / "run"), steps=steps, batch_size=batch_size, lr=lr, warmup_steps=100,
                         weight_decay=0.1, checkpoint_every=25, eval_every=100, log_every=10)
    heldout = blocks["heldout"][:: max(blocks["heldout"].shape[0] // 64, 1)]  # a fixed subset keeps eval quick
    result = train(LanguageModelObjective(model), blocks["train"], config, eval_blocks=heldout)
    return model, result


def train_heads(work: Path, model, blocks: dict[str, torch.Tensor], name: str, steps: int, batch_size: int,
                lr: float, destination: Path = PACKAGE_DIR) -> dict:
    """Train one drafter's heads on the frozen model (resumable) and save them into the package."""
    from spec.training import TrainConfig, train

    entry = DRAFTERS[name]
    drafter, objective = entry.build(model, entry.shipped_recipe, entry.shipped_options)
    prepare = entry.recipes[entry.shipped_recipe].prepare
    if prepare is not None:  # e.g. EAGLE-3's draft vocabulary, by token frequency on the training split
        prepare(drafter, blocks["train"])
    print(f"[heads] training {name}: {drafter.num_parameters / 1e6:.2f}M parameters, {steps} steps", flush=True)
    config = TrainConfig(out_dir=str(work / f"heads-{name}"), steps=steps, batch_size=batch_size, lr=lr,
                         warmup_steps=20, checkpoint_every=25, eval_every=100, log_every=10)
    heldout = blocks["heldout"][:: max(blocks["heldout"].shape[0] // 32, 1)]
    result = train(objective, blocks["train"], config, eval_blocks=heldout)
    # Shipped in bfloat16 to fit the package budget; loading casts to the model's dtype.
    trained = objective.trainable()
    trained.to(torch.bfloat16)
    drafter.save_pretrained(destination / "heads" / name)
    trained.to(torch.float32)
    return result.final_metrics


#: Heads whose projections are sliced to a reduced draft vocabulary without retraining (docs/benchmarks.md).
REDUCIBLE = ("medusa", "hydra", "clover")


def ship_draft_vocab(model, tokenizer, name: str, destination: Path = PACKAGE_DIR) -> dict:
    """Choose ``name``'s draft vocabulary by measured acceptance (held-out snippets 8-15, which the demo and
    bench do not use; token counts from the training split) and save the shipped heads with it."""
    from spec.apps.shipped import load_shipped_drafter, load_shipped_tree
    from spec.bench.draft_vocab import choose_draft_vocab

    counted = [tokenizer(text).input_ids for text in read_corpus(corpus_files()["train"][:300])]
    prompts = [tokenizer(s["prompt"], return_tensors="pt").input_ids for s in heldout_snippets()[8:16]]
    drafter = load_shipped_drafter(name, model)
    choice = choose_draft_vocab(model, drafter, load_shipped_tree(name), prompts, counted)
    drafter.heads.to(torch.bfloat16)  # as shipped: the package budget
    drafter.save_pretrained(destination / "heads" / name)
    drafter.heads.to(model.dtype)
    size = choice.vocab.size if choice.vocab is not None else None
    print(f"[vocab] {name}: draft vocabulary {size or 'whole'}; mean accepted by size "
          f"{[(k, round(v, 3)) for k, v in choice.table]}", flush=True)
    return {"size": size, "mean_accepted": [list(row) for row in choice.table]}


def ship_tree(model, tokenizer, drafter, name: str, destination: Path = PACKAGE_DIR, prompts: int = 8,
              new_tokens: int = 48) -> dict:
    """Measure the drafter's acceptance on held-out snippets and this machine's verify cost curve, and
    ship the tree with the most expected tokens per second (with its statistics and cost curve)."""
    from spec.io import atomic_write_bytes
    from spec.bench import measure_acceptance, measure_draft_costs, measure_verify_costs
    from spec.bench.pairing import verifier_for
    from spec.trees import choose_tree_for_hardware, save_tree
    from spec.verifiers import make_verifier

    texts = [s["prompt"] for s in heldout_snippets()][:prompts]
    ids = [tokenizer(t, return_tensors="pt").input_ids for t in texts]
    verifier = make_verifier(model)  # the verifier the demo and bench use by default
    # A self-drafter (Kangaroo) only works with its own verifier, EAGLE-3 with one reporting the layers it reads
    # (verifier_for gives either); verify costs are measured on the plain pass.
    paired = verifier_for(model, drafter)
    stats = measure_acceptance(model, drafter, paired, ids, depth=min(4, drafter.max_depth), width=4,
                               max_new_tokens=new_tokens, name=name)
    costs = measure_verify_costs(verifier, [1, 2, 4, 8, 12, 16, 24, 32, 48, 64], ids[0][0], repeats=5)
    # Drafting is not free on a CPU (each head ends in a vocabulary projection): size the tree with it.
    draft_costs = measure_draft_costs(drafter, paired, ids[0][0], range(1, stats.depth + 1), width=2, repeats=5)
    sized = choose_tree_for_hardware(stats, costs, draft_costs, max_budget=63)
    (destination / "stats").mkdir(parents=True, exist_ok=True)
    stats.save(destination / "stats" / f"{name}.json")
    meta = {"expected_length": sized.expected_length, "predicted_tokens_per_second": sized.tokens_per_second,
            "budget": sized.budget, "depth": sized.depth, "verify_costs": costs, "draft_costs": draft_costs,
            "device": "cpu"}
    save_tree(destination / "trees" / f"{name}.json", sized.tree, meta)
    atomic_write_bytes(destination / "trees" / f"{name}.costs.json", json.dumps(costs).encode())
    print(f"[tree] {name}: depth-1 top-1 acceptance {stats.probs[0][0]:.2f}, tree of {sized.budget} candidates, "
          f"depth {sized.depth}, expected length {sized.expected_length:.2f}", flush=True)
    return meta


def heldout_snippets(count: int = 32, prompt_lines: int = 12) -> list[dict]:
    """Fixed prompts: the first ``prompt_lines`` lines of each function in held-out modules, in path order."""
    import ast

    snippets = []
    for path in corpus_files()["heldout"]:
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= prompt_lines + 8:
                start = node.lineno - 1
                snippets.append({"module": path.relative_to(stdlib_root()).as_posix(), "function": node.name,
                                 "prompt": "\n".join(lines[start : start + prompt_lines]) + "\n"})
                break
        if len(snippets) == count:
            break
    return snippets


def export(work: Path, model, tokenizer, train_tokens: int, tokens_per_step: int,
           destination: Path = PACKAGE_DIR) -> None:
    """Weights in bfloat16 (half the size; loaded back in float32), config, tokenizer, and training facts."""
    from spec.io import atomic_write_bytes

    destination.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(destination, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(destination)
    log = [json.loads(line) for line in (work / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval_loss" in r]
    facts = {"name": NAME, "corpus": "Python standard library (see spec/apps/shipped/corpus.py)",
             "train_tokens_per_epoch": train_tokens, "steps": log[-1]["step"] if log else 0,
             "tokens_seen": (log[-1]["step"] if log else 0) * tokens_per_step,
             "heldout_loss": evals[-1]["eval_loss"] if evals else None,
             "heldout_perplexity": evals[-1]["eval_perplexity"] if evals else None}
    atomic_write_bytes(destination / "training.json", json.dumps(facts, indent=2).encode())
    prompts = "".join(json.dumps(s) + "\n" for s in heldout_snippets())
    atomic_write_bytes(destination / "heldout_prompts.jsonl", prompts.encode())
    print(f"[4/4] exported to {destination}: held-out loss {facts['heldout_loss']}", flush=True)


def check_arguments(args: argparse.Namespace) -> list[str]:
    """Every option before any stage runs; returns the drafters whose heads to train (or re-size)."""
    from spec.apps.options import check_int, check_names, check_real
    from spec.errors import OptionError
    from spec.io import check_writable_directory
    from spec.apps.shipped import shipped_names

    check_int(args.steps, "--steps", 1)
    check_int(args.batch_size, "--batch-size", 1)
    check_real(args.lr, "--lr", 0.0, low_open=True)
    if args.threads is not None:
        check_int(args.threads, "--threads", 1)
    check_int(args.head_steps, "--head-steps", 1)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    if heads:
        check_names(heads, "--heads", sorted(DRAFTERS), "drafter")
        if not args.export and not args.trees_only and not args.draft_vocab_only and NAME not in shipped_names():
            raise OptionError("--heads trains on the exported model, and none is installed; add --export.")
    if args.trees_only or args.draft_vocab_only:
        option = "--trees-only" if args.trees_only else "--draft-vocab-only"
        if not heads:
            raise OptionError(f"{option} works on the drafters named by --heads; name at least one, "
                              f"e.g. --heads medusa (from {', '.join(sorted(DRAFTERS))}).")
        if NAME not in shipped_names():
            raise OptionError(f"{option} works on the shipped model, which is not installed; build "
                              "it with --export first.")
    else:
        check_writable_directory(args.work, "--work directory", replaced=False)
    return heads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="spec build-model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="build/shipped", help="working directory for every stage (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="blocks of 256 tokens per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--export", action="store_true", help="write the trained model into the package")
    parser.add_argument("--heads", default="", help=f"comma-separated drafters whose heads to train and ship "
                        f"(from {sorted(DRAFTERS)}); needs the model exported first")
    parser.add_argument("--head-steps", type=int, default=400, help="optimizer steps per drafter (default: %(default)s)")
    parser.add_argument("--trees-only", action="store_true",
                        help="skip head training: re-measure acceptance and costs and re-size the shipped trees")
    parser.add_argument("--draft-vocab-only", action="store_true",
                        help=f"skip head training: re-choose the reduced draft vocabulary of the shipped {', '.join(REDUCIBLE)} "
                        "heads by measured acceptance and save them with it")
    args = parser.parse_args(argv)
    heads = check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    from spec.apps.shipped import load_shipped, load_shipped_drafter

    if args.draft_vocab_only:
        model, tokenizer = load_shipped()
        for name in heads:
            if name in REDUCIBLE:
                ship_draft_vocab(model, tokenizer, name)
        return 0
    if args.trees_only:
        # Re-sizing trees needs only what is shipped: no tokenizer, corpus or base-model stages.
        model, tokenizer = load_shipped()
        for name in heads:
            ship_tree(model, tokenizer, load_shipped_drafter(name, model), name)
        print(f"done in {time.time() - start:.0f}s: trees for {', '.join(heads) or 'no drafter'}", flush=True)
        return 0
    tokenizer = build_tokenizer(work)
    blocks = build_blocks(work, tokenizer)
    model, result = train_model(work, blocks, args.steps, args.batch_size, args.lr)
    if args.export:
        export(work, model, tokenizer, int(blocks["train"][:, 1:].numel()), args.batch_size * BLOCK_SIZE)
    if heads:
        # Train heads on exactly the weights users load (the export rounds them to bfloat16).
        model, _ = load_shipped()
    for name in heads:
        model.eval()
        metrics = train_heads(work, model, blocks, name, args.head_steps, 8, 1e-3)
        print(f"[heads] {name}: {metrics}", flush=True)
        if name in REDUCIBLE:
            ship_draft_vocab(model, tokenizer, name)
        ship_tree(model, tokenizer, load_shipped_drafter(name, model), name)
    print(f"done in {time.time() - start:.0f}s: {result.final_metrics}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
