"""Continue training a shipped drafter's heads on the shipped model's corpus, from the shipped weights.

    python docs/continue_heads.py --drafter eagle3 --steps 1000 --work build/continue [--threads 1]

The shipped heads are the starting point (their draft vocabulary kept); the learning rate restarts with a short
warm-up and a cosine decay over --steps. Checkpoints every 25 steps in ``<work>/heads-<drafter>``: a killed run
resumes from the last one when started again with the same arguments. The held-out evaluation every 100 steps
(``log.jsonl``: per-depth top-1 accuracy against the data) is the curve docs/benchmarks.md quotes; the trained
heads are written to ``<work>/heads-<drafter>/heads`` (not into the package: ship them by copying after
measuring them with ``spec bench --model``-style runs or ``spec build-model --trees-only``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafter", default="eagle3", help="shipped heads to continue (default: eagle3)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: 1000)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: 5e-4, half the first run's)")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks of 256 tokens per step (default: 8)")
    parser.add_argument("--work", default="build/continue", help="working directory (default: build/continue)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from spec.apps.shipped import load_shipped, load_shipped_drafter, shipped_path
    from spec.apps.shipped.build import build_blocks
    from spec.registry import DRAFTERS
    from spec.training import TrainConfig, train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_shipped()
    model.eval()
    # The corpus packed with the shipped tokenizer (the split the shipped heads were trained on).
    blocks = build_blocks(work, tokenizer)
    entry = DRAFTERS[args.drafter]
    drafter = load_shipped_drafter(args.drafter, model)
    objective = entry.recipes[entry.shipped_recipe].objective(model, drafter, entry.shipped_options)
    out = work / f"heads-{args.drafter}"
    config = TrainConfig(out_dir=str(out), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=20, checkpoint_every=25, eval_every=100, log_every=10)
    heldout = blocks["heldout"][:: max(blocks["heldout"].shape[0] // 32, 1)]  # the subset build-model evaluates on
    print(f"continuing {args.drafter} from {shipped_path()}: start {objective.evaluate(objective.trainable(), heldout)}",
          flush=True)
    result = train(objective, blocks["train"], config, eval_blocks=heldout,
                   run={"drafter": args.drafter, "continued_from": "shipped", "lr": args.lr})
    trained = objective.trainable()
    trained.to(torch.bfloat16)  # as shipped: the package budget
    drafter.save_pretrained(out / "heads")
    print(f"final {result.final_metrics}; heads in {out / 'heads'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
