"""One training loop for every recipe, on accelerate.

A recipe is an :class:`Objective`: which module is trained and how a batch of token
blocks becomes a loss. The loop owns everything else: batching in a seeded order,
gradient accumulation, mixed precision and several processes (through accelerate: under
``accelerate launch`` or ``torchrun`` each process trains on its share of every batch and the gradients
are averaged, so the weights are those of one process with the same global batch), a warm-up + cosine learning rate,
evaluation, a JSONL log, a progress bar, and atomic checkpoints from which a killed
run resumes to exactly the weights an uninterrupted run would have reached.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import attrs
import torch
from torch import nn

from spec.errors import CheckpointError, ConfigurationError, TrainingDivergedError, UnsupportedError
from spec.io import atomic_write_bytes
from spec.training.checkpoint import latest_checkpoint, load_latest_intact, save_training_checkpoint
from spec.training.data import Blocks, TokenBlocks
from spec.training.objectives import counted_over_processes
from spec.training.sharding import SHARDING_ENV  # noqa: F401  (re-exported: where it was defined before)
from spec.training.sharding import (SHARDING_CHOICES, FullOptimizerState, ShardedRoot, full_weights,
                                    load_full_weights, resolve_sharding, shard)


class Objective(Protocol):
    def trainable(self) -> nn.Module:
        """The module whose parameters are trained and checkpointed."""

    def param_groups(self, module: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (e.g. a larger learning rate for heads)."""

    def loss(self, module: nn.Module, batch: Blocks, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on ``batch`` ``[B, T + 1]`` token blocks (with their loss mask for TokenBlocks), and metrics to log."""

    def evaluate(self, module: nn.Module, blocks: Blocks) -> dict[str, float]:
        """Held-out metrics on ``blocks``."""

    # Optional, for sharded training (``TrainConfig.sharding="fsdp"``): ``shard_units(module)`` returns the
    # submodules of the trainable ``module`` that are each one FSDP group (decoder layers, heads). An objective
    # without it is refused under FSDP.


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(instance, attribute, value):
    if not _number(value) or value <= 0:
        raise ConfigurationError(f"TrainConfig.{attribute.name} must be a finite number > 0, got {value!r}.")


def _non_negative(instance, attribute, value):
    if not _number(value) or value < 0:
        raise ConfigurationError(f"TrainConfig.{attribute.name} must be a finite number >= 0, got {value!r}.")


def _ratio(instance, attribute, value):
    if not _number(value) or not 0 <= value <= 1:
        raise ConfigurationError(f"TrainConfig.{attribute.name} must be a number in [0, 1], got {value!r}.")


def _sharding(instance, attribute, value):
    if value not in SHARDING_CHOICES:
        raise ConfigurationError(f"TrainConfig.sharding must be one of {SHARDING_CHOICES}, got {value!r}.")


def _precision(instance, attribute, value):
    if value not in ("no", "bf16", "fp16"):
        raise ConfigurationError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {value!r}.")


@attrs.frozen
class TrainConfig:
    out_dir: str
    steps: int = attrs.field(validator=_positive)
    batch_size: int = attrs.field(default=8, validator=_positive)
    grad_accumulation: int = attrs.field(default=1, validator=_positive)
    lr: float = attrs.field(default=1e-3, validator=_positive)
    warmup_steps: int = attrs.field(default=50, validator=_non_negative)
    min_lr_ratio: float = attrs.field(default=0.1, validator=_ratio)
    weight_decay: float = attrs.field(default=0.0, validator=_non_negative)
    grad_clip: float = attrs.field(default=1.0, validator=_non_negative)
    mixed_precision: str = attrs.field(default="no", validator=_precision)
    checkpoint_every: int = attrs.field(default=100, validator=_positive)
    eval_every: int = attrs.field(default=100, validator=_positive)
    log_every: int = attrs.field(default=10, validator=_positive)
    seed: int = 0
    progress: bool = True
    #: "fsdp": shard the trainable module over the processes with FSDP2 (spec.training.sharding); an accelerate
    #: FSDP config (ACCELERATE_USE_FSDP) asks for it too.
    sharding: str = attrs.field(default="no", validator=_sharding)


#: The settings a resumed run must share with the run it resumes (the others only change logging).
RUN_SETTINGS = ("steps", "batch_size", "grad_accumulation", "lr", "warmup_steps", "min_lr_ratio", "weight_decay",
                "grad_clip", "mixed_precision", "seed")
RUN_FILE = "run.json"


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(config.steps - config.warmup_steps, 1)
        progress = min((step - config.warmup_steps) / span, 1.0)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def batch_indices(step: int, micro: int, config: TrainConfig, num_blocks: int) -> torch.Tensor:
    """Rows for micro-batch ``micro`` of ``step``: a fixed function of the seed, so resuming replays it."""
    per_step = config.batch_size * config.grad_accumulation
    flat = torch.arange(config.batch_size) + step * per_step + micro * config.batch_size
    rows = torch.empty_like(flat)
    for epoch in flat.div(num_blocks, rounding_mode="floor").unique().tolist():
        order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        chosen = flat.div(num_blocks, rounding_mode="floor") == epoch
        rows[chosen] = order[flat[chosen] % num_blocks]
    return rows


@attrs.frozen
class TrainResult:
    steps: int
    final_metrics: dict[str, float]
    log_path: Path


def train(objective: Objective, train_blocks: Blocks, config: TrainConfig,
          eval_blocks: Optional[Blocks] = None, resume: bool = True,
          on_checkpoint: Optional[Callable[[int], None]] = None, run: Optional[dict[str, Any]] = None) -> TrainResult:
    """Train ``objective`` on ``train_blocks`` ``[N, T + 1]`` (a tensor, or :class:`TokenBlocks` whose loss mask
    every objective honours); resumes from ``config.out_dir`` when it can.

    ``run``: what else defines the run (drafter, recipe, head options...), recorded in ``run.json`` with the
    settings and a digest of the data; resuming with any of them changed is refused, not mixed in.
    """
    from accelerate import Accelerator  # heavy import, only when training

    sharding = resolve_sharding(config.sharding)
    out = Path(config.out_dir)
    if sharding == "fsdp":
        _check_shardable(objective, config)
    out.mkdir(parents=True, exist_ok=True)
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigurationError("mixed_precision 'fp16' needs a CUDA GPU (on the CPU it would silently train in "
                                 "float32); use 'bf16' or 'no' on the CPU.")
    # cpu=True without a GPU: under `torchrun` / `accelerate launch --multi_gpu` that is what makes accelerate
    # run several CPU processes (gloo) instead of silently one copy of the run per process.
    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=1,
                              cpu=not torch.cuda.is_available())
    sharding = resolve_sharding(sharding, str(accelerator.distributed_type))
    if sharding == "fsdp":
        _check_shardable(objective, config)
    rank, world = accelerator.process_index, accelerator.num_processes
    _check_batch_splits(config.batch_size, world)
    torch.manual_seed(config.seed)
    module = objective.trainable()
    root: Optional[ShardedRoot] = None
    if sharding == "fsdp":
        # Before the optimizer is built: sharding replaces the parameters with their DTensor shards.
        root = shard(module, objective.shard_units(module), accelerator.device)  # type: ignore[attr-defined]
    optimizer = torch.optim.AdamW(objective.param_groups(module, config.lr), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    # Checkpoints see the optimizer of a sharded module as one over the whole module (full state, by name).
    saved_optimizer = FullOptimizerState(module, optimizer) if root is not None else optimizer

    identity = _run_identity(config, train_blocks, run, sharding)
    start_step, state = 0, {}
    if resume:
        _check_same_run(out, identity)
        loaded = load_latest_intact(out, saved_optimizer, scheduler)
        if loaded is not None:
            start_step, weights, state = loaded
            try:
                if root is not None:
                    load_full_weights(module, weights)
                else:
                    module.load_state_dict(weights)
            except (RuntimeError, KeyError) as error:
                raise CheckpointError(f"The checkpoint in {out} does not fit this run's module ({str(error).splitlines()[0]}); "
                                      "resume with the options it was started with, or use a new --out.") from error
    if accelerator.is_main_process:
        atomic_write_bytes(out / RUN_FILE, json.dumps(identity, indent=2).encode())
    if root is None:
        # The module is not wrapped for DDP: objectives call its parts (heads, layers) directly, which a wrapper
        # would hide and whose forward would bypass its gradient hooks. Gradients are averaged explicitly instead.
        module = module.to(accelerator.device)
        optimizer = accelerator.prepare(optimizer)

    def call(fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(module, *args)``; through FSDP's root when sharded, so its hooks gather the parameters."""
        return root(fn, *args) if root is not None else fn(module, *args)

    log_path = out / "log.jsonl"
    _truncate_log(log_path, start_step)

    progress = None
    if config.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.steps, initial=start_step, desc="training", dynamic_ncols=True)
    # A finished run started again reports the metrics of its last evaluation, not nothing.
    metrics: dict[str, float] = dict(state.get("metrics") or {})
    step_time = time.perf_counter()
    for step in range(start_step, config.steps):
        module.train()
        totals: dict[str, float] = {}
        for micro in range(config.grad_accumulation):
            rows = batch_indices(step, micro, config, train_blocks.shape[0])[rank::world]
            batch = train_blocks[rows].to(accelerator.device)
            # counted_over_processes: a mean over counted (e.g. assistant) tokens is over every process's.
            with accelerator.autocast(), counted_over_processes(world):
                loss, parts = call(objective.loss, batch, step)
            if not _finite_everywhere(loss.detach(), accelerator, world):
                _diverged(out, step, f"the loss is {float(loss.detach())} (on this or another process)")
            accelerator.backward(loss / config.grad_accumulation)
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value / config.grad_accumulation
        if root is not None:
            # FSDP reduce-scattered (averaged) each gradient in backward; the norm of DTensor gradients is the
            # whole gradient's, summed over the shards.
            norm = _full(torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip or math.inf))
        else:
            if world > 1:
                _average_gradients(accelerator, module)
            norm = accelerator.clip_grad_norm_(module.parameters(), config.grad_clip or math.inf)
        if norm is not None and not torch.isfinite(torch.as_tensor(norm)).all():
            _diverged(out, step, f"the gradient norm is {float(norm)}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        record = None
        if done % config.log_every == 0 or done == config.steps:
            record = {"step": done, "lr": scheduler.get_last_lr()[0], **totals,
                      "seconds_per_step": (time.perf_counter() - step_time) / config.log_every}
            step_time = time.perf_counter()
        if eval_blocks is not None and (done % config.eval_every == 0 or done == config.steps):
            module.eval()
            with torch.no_grad():
                metrics = {f"eval_{k}": v for k, v in call(objective.evaluate, eval_blocks).items()}
            record = {**(record or {"step": done}), **metrics}
        if record is not None and accelerator.is_main_process:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if progress is not None:
            progress.update(1)
            progress.set_postfix({k: f"{v:.3f}" for k, v in totals.items() if k in ("loss", "acc1")})
        if done % config.checkpoint_every == 0 or done == config.steps:
            accelerator.wait_for_everyone()
            if root is not None:  # every process gathers its shards; the main process then holds everything
                weights = full_weights(module)
                saved_optimizer.gather()  # type: ignore[union-attr]
            elif accelerator.is_main_process:
                weights = accelerator.unwrap_model(module).state_dict()
            if accelerator.is_main_process:
                save_training_checkpoint(out, done, weights, saved_optimizer, scheduler, {"metrics": metrics})
                if on_checkpoint is not None:
                    on_checkpoint(done)
    if progress is not None:
        progress.close()
    return TrainResult(steps=config.steps, final_metrics=metrics, log_path=log_path)


def _check_batch_splits(batch_size: int, processes: int) -> None:
    """Each process takes every ``processes``-th row of a batch; unequal shares would give the rows of a
    plain-text batch unequal weights in the averaged gradient (its mean is each process's own)."""
    if batch_size % processes:
        raise ConfigurationError(f"batch_size {batch_size} does not split evenly over {processes} processes; use a "
                                 f"multiple of {processes} (--batch-size is the whole batch, split over the processes).")


def _full(norm: torch.Tensor) -> torch.Tensor:
    """A DTensor (the norm of sharded gradients, replicated on every process) as a plain tensor."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def _check_shardable(objective: Objective, config: TrainConfig) -> None:
    """FSDP for the objectives that train a model too big for one device; refused, with the reason, for the rest."""
    if not callable(getattr(objective, "shard_units", None)):
        raise UnsupportedError(
            f"FSDP sharding is for training a base model with its heads (recipe medusa2); {type(objective).__name__} "
            "trains draft modules on a frozen model, which every process holds whole, so sharding the small "
            "trained part saves nothing. Drop --sharding fsdp / the FSDP accelerate config and use a plain "
            "multi-GPU (DDP-style) config.")
    if config.mixed_precision == "fp16":
        raise ConfigurationError("FSDP sharding with fp16 needs a sharded gradient scaler, which spec does not use; "
                                 "use --mixed-precision bf16 (or no).")


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines a killed run wrote after its last checkpoint, so a resumed log has no repeats; a line
    torn by the kill (not JSON, or without a step) goes too."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    atomic_write_bytes(log_path, "".join(line + "\n" for line in kept).encode())


def _finite_everywhere(loss: torch.Tensor, accelerator, world: int) -> bool:
    """Whether the loss is finite on every process (one scalar all-reduce). One process stopping alone on a NaN
    leaves the others in the next collective until the launcher kills them (torchrun reports a failed worker,
    not the divergence) or the collective times out; every process stops with the divergence error instead."""
    bad = (~torch.isfinite(loss)).any().to(torch.float32).reshape(1)
    if world > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return not bool(bad.item())


def _average_gradients(accelerator, module: nn.Module) -> None:
    """Every process's gradients replaced by their mean over the processes: one all-reduce of one flat buffer."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def _run_identity(config: TrainConfig, blocks: Blocks, run: Optional[dict[str, Any]],
                  sharding: str = "no") -> dict[str, Any]:
    settings = {name: getattr(config, name) for name in RUN_SETTINGS}
    # Recorded only when sharded, so runs started before the option resume unchanged. The optimizer state of a
    # sharded run is keyed by parameter name, an unsharded run's by position: switching is refused.
    if sharding != "no":
        settings["sharding"] = sharding
    data = blocks.digest_bytes() if isinstance(blocks, TokenBlocks) else blocks.to(torch.long).contiguous().numpy().tobytes()
    digest = hashlib.sha256(data).hexdigest()
    return {"settings": settings, "data_sha256": digest, "data_blocks": list(blocks.shape), "run": run or {}}


def _check_same_run(out: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume a run whose settings, data or options differ from the ones it was started with."""
    path = out / RUN_FILE
    if not path.exists():
        return
    try:
        before = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); start the run over with --no-resume.") from error
    changed = [f"{k}: {before['settings'].get(k)!r} -> {v!r}" for k, v in identity["settings"].items()
               if k != "steps" and before.get("settings", {}).get(k) != v]
    was, now = before.get("settings", {}).get("sharding", "no"), identity["settings"].get("sharding", "no")
    if was != now:
        changed.append(f"sharding: {was!r} -> {now!r}")
    changed += [f"{k}: {before['run'].get(k)!r} -> {v!r}" for k, v in identity["run"].items()
                if before.get("run", {}).get(k) != v]
    if before.get("data_sha256") != identity["data_sha256"]:
        changed.append("the training data (its token blocks differ)")
    if changed:
        raise ConfigurationError(
            f"{out} holds a run started with other options ({'; '.join(changed)}); resuming would mix them. "
            "Resume with the same options and data, or use a new --out (or --no-resume to start over there).")


def _diverged(out: Path, step: int, what: str) -> None:
    latest = latest_checkpoint(out) if (out / "latest").exists() else None
    kept = f"the last good checkpoint is {latest.name}" if latest is not None else "no checkpoint was written yet"
    raise TrainingDivergedError(
        f"Training diverged at step {step}: {what}. Nothing from this step was applied or saved; {kept}. "
        "Lower --lr (or check the data), then resume.")
