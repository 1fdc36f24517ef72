"""Sharded training with torch's FSDP2 (``torch.distributed.fsdp.fully_shard``), for Medusa-2's joint training
of a base model that does not fit one device.

How a run asks for it: ``TrainConfig(sharding="fsdp")`` (``spec train --sharding fsdp``), or an accelerate FSDP
config (``ACCELERATE_USE_FSDP``, which ``accelerate launch`` sets). DeepSpeed and Megatron-LM are refused.

What it does, and why each part is needed:

* Every unit the objective names (``shard_units``: Medusa-2's decoder layers and each head) is one FSDP
  group, then the trainable module as a whole is the root group (embeddings, final norm, lm_head). Each
  process holds 1/world of every parameter (a ``DTensor`` shard) between uses; a group's full parameters are
  gathered just before its forward and freed after it (and again in backward).
* FSDP gathers a group's parameters in the pre-forward hook of the module it wraps. The objectives call the
  trainable module's parts directly (``module["backbone"](...)``, ``head(hidden)``), never the root's own
  forward, so the root's hooks would never fire. :class:`ShardedRoot` is the root instead: its forward runs
  any function of the trainable module (the objective's loss, its evaluation), so the root's hooks wrap the
  whole computation and the units' own hooks fire as the objective calls them.
* Gradients are reduce-scattered by FSDP in backward (averaged over the processes); the loop's own
  all-reduce is skipped. Clipping uses ``torch.nn.utils.clip_grad_norm_``, which on DTensor gradients sums
  the squared shard norms over the processes: the norm of the whole gradient, as one process would clip.
* Checkpoints hold full (unsharded) weights and optimizer state, gathered to the main process
  (``torch.distributed.checkpoint.state_dict``, ``full_state_dict=True``), stored like every other
  checkpoint (safetensors + JSON, the optimizer keyed by parameter name); a resumed run scatters them back to
  its shards, so it may even run on another number of processes.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch
from torch import nn

from spec.errors import ConfigurationError, UnsupportedError

SHARDING_CHOICES = ("no", "fsdp")

#: What `accelerate launch` sets for a DeepSpeed, FSDP or Megatron-LM config (accelerate's own names).
SHARDING_ENV = ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_MEGATRON_LM")
_UNSUPPORTED_ENV = ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_MEGATRON_LM")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "y", "on")


def resolve_sharding(requested: str = "no", distributed_type: str = "") -> str:
    """``"fsdp"`` or ``"no"``: the sharding a run asked for, by ``requested`` (``TrainConfig.sharding``) or by
    accelerate's environment; a DeepSpeed or Megatron-LM config, or FSDP options spec does not honour, raise
    :class:`UnsupportedError` before anything trains."""
    chosen = [name for name in _UNSUPPORTED_ENV if _env_true(name)]
    if any(kind in distributed_type.upper() for kind in ("DEEPSPEED", "MEGATRON")):
        chosen.append(distributed_type)
    if chosen:
        raise UnsupportedError(
            f"This accelerate config asks for {', '.join(chosen)}, which spec's training loop does not run: "
            "DeepSpeed ZeRO and Megatron-LM shard the model through accelerator.prepare(model) and step through "
            "their own engine, and spec's objectives call the model's parts directly. For Medusa-2's joint "
            "training of a base model that does not fit one device use FSDP (`accelerate config`: FSDP, version "
            "2, or `spec train --sharding fsdp`); for head-only recipes a plain multi-GPU config (no DeepSpeed, "
            "no FSDP).")
    fsdp = requested == "fsdp" or _env_true("ACCELERATE_USE_FSDP") or "FSDP" in distributed_type.upper()
    if not fsdp:
        return "no"
    # accelerate's FSDP answers that would change what runs, and that spec does not do: refused, not ignored.
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise UnsupportedError(f"This accelerate config asks for FSDP version {os.environ['FSDP_VERSION']}; spec "
                               "shards with FSDP2 (fully_shard) only. Answer 2 to `accelerate config`'s FSDP "
                               "version question (or set FSDP_VERSION=2).")
    for name, what in (("FSDP_OFFLOAD_PARAMS", "parameter offload to the CPU"),
                       ("FSDP_ACTIVATION_CHECKPOINTING", "activation checkpointing")):
        if _env_true(name):
            raise UnsupportedError(f"This accelerate config asks for FSDP {what} ({name}), which spec's sharded "
                                   "training does not do; answer no to it in `accelerate config`.")
    return "fsdp"


class ShardedRoot(nn.Module):
    """FSDP's root module: ``root(fn, *args)`` returns ``fn(root.module, *args)`` inside the root's forward, so
    FSDP gathers the root group's parameters around the whole call (see the module docstring)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.module, *args)


def shard(module: nn.Module, units: list[nn.Module], device: torch.device) -> ShardedRoot:
    """Shard ``module`` in place over every process of the default process group: each of ``units`` one FSDP
    group, the rest of ``module`` the root group. Returns the root to call the objective through."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise ConfigurationError("FSDP needs the processes' group: start the run with `accelerate launch` or "
                                 "`torchrun` (one process shards nothing; drop --sharding fsdp there).")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    owned = {id(p) for p in module.parameters()}
    for unit in units:
        if any(id(p) not in owned for p in unit.parameters()):
            raise ConfigurationError(f"A shard unit ({type(unit).__name__}) is not part of the trained module.")
        fully_shard(unit, mesh=mesh)
    root = ShardedRoot(module)
    fully_shard(root, mesh=mesh)
    return root


def _options(**changes: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **changes)


def full_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict of a sharded ``module`` on the main process ({} on the others); every
    process must call it (the shards are gathered)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(cpu_offload=True))


def load_full_weights(module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Scatter a whole state dict (every process holds it) into the sharded ``module``'s shards."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, weights, options=_options())


class FullOptimizerState:
    """An optimizer over a sharded module, seen by checkpointing as one over the whole module: ``state_dict``
    is the full state (keyed by parameter name), ``load_state_dict`` scatters one back to the shards.

    ``gather()`` (every process, before the main one saves) leaves the full state on the main process only,
    where :meth:`state_dict` then returns it without another collective."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.module = module
        self.optimizer = optimizer
        self._gathered: Optional[dict[str, Any]] = None

    def gather(self) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        self._gathered = get_optimizer_state_dict(self.module, self.optimizer, options=_options(cpu_offload=True))

    def state_dict(self) -> dict[str, Any]:
        if self._gathered is not None:
            gathered, self._gathered = self._gathered, None
            return gathered
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, self.optimizer, options=_options())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.module, self.optimizer, state_dict, options=_options())


def local_shard_sizes(module: nn.Module) -> dict[str, tuple[int, int]]:
    """Per parameter: (elements this process holds, elements of the whole parameter)."""
    from torch.distributed.tensor import DTensor

    return {name: ((p.to_local().numel(), p.numel()) if isinstance(p, DTensor) else (p.numel(), p.numel()))
            for name, p in module.named_parameters()}
