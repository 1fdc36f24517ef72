"""Tiny training runs, as a script, so tests can start them under torchrun, kill them mid-run and resume them.

    python tests/train_tiny.py OUT STEPS [medusa | medusa2 | medusa2-fsdp | chat]

medusa: Medusa-1 heads on text blocks; medusa2: Medusa-2 joint training (backbone + heads) on text blocks;
medusa2-fsdp: the same, sharded with FSDP2 (needs torchrun); chat: Medusa-1 heads on conversation blocks
(TokenBlocks with the assistant-only loss mask) of different lengths.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

from spec import MedusaDrafter
from spec.testing.models import tiny_model
from spec.training import Medusa2Objective, MedusaObjective, TrainConfig, train

VOCAB = 96


def cyclic_blocks(count: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Learnable data: each block counts up (mod vocab) from a random start."""
    starts = torch.randint(vocab, (count, 1), generator=torch.Generator().manual_seed(seed))
    return (starts + torch.arange(length + 1)) % vocab


def chat_blocks(count: int, block_size: int):
    """Conversation blocks from the chat template of tests/test_training_chat.py: each conversation's turns have
    their own lengths, so the blocks hold different numbers of assistant tokens."""
    from test_training_chat import chat_tokenizer, text  # the suite's word-level chat tokenizer

    from spec.training import conversation_blocks

    g = torch.Generator().manual_seed(0)
    words = lambda low, high: text(*torch.randint(40, (int(torch.randint(low, high, (1,), generator=g)),),  # noqa: E731
                                                  generator=g).tolist())
    conversations = [[{"role": "user", "content": words(1, 6)}, {"role": "assistant", "content": words(1, 9)},
                      {"role": "user", "content": words(1, 4)}, {"role": "assistant", "content": words(1, 5)}]
                     for _ in range(count)]
    return conversation_blocks(iter(conversations), chat_tokenizer(), block_size)


def run(out_dir: str, steps: int, mode: str = "medusa", checkpoint_every: int = 4):
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0, vocab_size=VOCAB)
    drafter = MedusaDrafter.from_model(model, num_heads=2, num_layers=1, seed=0)
    config = TrainConfig(out_dir=out_dir, steps=steps, batch_size=4, lr=3e-3, warmup_steps=2,
                         checkpoint_every=checkpoint_every, eval_every=1000, log_every=1, progress=False,
                         sharding="fsdp" if mode == "medusa2-fsdp" else "no")
    if mode.startswith("medusa2"):
        # Heads alone for 2 steps, then jointly: both phases of the recipe are in the run.
        objective = Medusa2Objective(model, drafter.heads, head_warmup_steps=2)
    else:
        objective = MedusaObjective(model, drafter.heads)
    blocks = chat_blocks(48, 24) if mode == "chat" else cyclic_blocks(64, 16, VOCAB)
    # A test that kills the run sets a pause after each checkpoint, so the kill lands between checkpoints
    # however fast the machine is (the pause changes nothing the run computes).
    pause = float(os.environ.get("TRAIN_TINY_PAUSE_AFTER_CHECKPOINT", "0"))
    rank = int(os.environ.get("RANK", "0"))
    poisoned = os.environ.get("TRAIN_TINY_NAN_LOSS")  # "RANK STEP": that process's loss is NaN at that step
    if poisoned is not None and int(poisoned.split()[0]) == rank:
        at, loss = int(poisoned.split()[1]), objective.loss

        def nan_loss(module, batch, step):
            value, parts = loss(module, batch, step)
            return (value * float("nan") if step == at else value), parts

        objective.loss = nan_loss

    def on_checkpoint(step: int) -> None:  # called by the loop on the main process only
        with open(Path(out_dir) / "checkpoints.txt", "a") as handle:
            handle.write(f"{rank} {step}\n")
        time.sleep(pause)

    # torchrun starts each worker in a session of its own, so killing torchrun's process group leaves the workers
    # running: a test that kills the run kills these processes by id.
    (Path(out_dir)).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"pid-{rank}").write_text(str(os.getpid()))
    train(objective, blocks, config, on_checkpoint=on_checkpoint)
    return objective, rank


if __name__ == "__main__":
    torch.set_num_threads(1)
    objective, rank = run(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "medusa")
    from safetensors.torch import save_file

    from spec.training.sharding import local_shard_sizes

    module = objective.trainable()
    # What this process holds of each parameter after the run (a shard under FSDP, everything otherwise).
    (Path(sys.argv[1]) / f"shards-{rank}.json").write_text(json.dumps(local_shard_sizes(module)))
    from torch.distributed.fsdp import FSDPModule

    # Which modules are FSDP groups of their own ("" is the trained module, inside the root group).
    units = [name for name, m in module.named_modules() if isinstance(m, FSDPModule)]
    (Path(sys.argv[1]) / f"units-{rank}.json").write_text(json.dumps(units))
    if rank == 0 and not sys.argv[3:4] == ["medusa2-fsdp"]:  # unsharded: every process holds the same weights
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, sys.argv[1] + "/final.safetensors")
