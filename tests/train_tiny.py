"""A tiny Medusa-1 training run, as a script, so tests can kill it mid-run and resume it."""

import os
import sys
import time

import torch

from spec import MedusaDrafter
from spec.testing.models import tiny_model
from spec.training import MedusaObjective, TrainConfig, train


def cyclic_blocks(count: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Learnable data: each block counts up (mod vocab) from a random start."""
    starts = torch.randint(vocab, (count, 1), generator=torch.Generator().manual_seed(seed))
    return (starts + torch.arange(length + 1)) % vocab


def run(out_dir: str, steps: int, checkpoint_every: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0, vocab_size=96)
    drafter = MedusaDrafter.from_model(model, num_heads=2, num_layers=1, seed=0)
    config = TrainConfig(out_dir=out_dir, steps=steps, batch_size=4, lr=3e-3, warmup_steps=2,
                         checkpoint_every=checkpoint_every, eval_every=1000, log_every=1, progress=False)
    # A test that kills the run sets a pause after each checkpoint, so the kill lands between checkpoints
    # however fast the machine is (the pause changes nothing the run computes).
    pause = float(os.environ.get("TRAIN_TINY_PAUSE_AFTER_CHECKPOINT", "0"))
    train(MedusaObjective(model, drafter.heads), cyclic_blocks(64, 16, 96), config,
          on_checkpoint=(lambda step: time.sleep(pause)) if pause else None)
    return drafter.heads


if __name__ == "__main__":
    torch.set_num_threads(1)
    heads = run(sys.argv[1], int(sys.argv[2]))
    from safetensors.torch import save_file

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process holds the same weights
        save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, sys.argv[1] + "/final.safetensors")
