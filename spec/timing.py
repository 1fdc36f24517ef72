"""How much of a decoding step is spent in network forward passes, and how much around them; stage clocks.

While a :class:`ForwardTimer` is active, it adds up the wall time of every outermost
``nn.Module`` call (the target model, draft heads, an lm_head called on its own) and of
regions a stage marks with :func:`forward_region` (a compiled or hand-run forward that
is not one module call). Nested calls are not counted twice. Everything else in a step,
mask building, cache bookkeeping, top-k, acceptance, Python, is the step's overhead.

Inactive (the default), it costs one global read per marked region and nothing per
module call. On CUDA it synchronises around each counted call, which serialises the
step: use it in a separate profiled run, not the timed one.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Optional

import torch

_active: Optional["ForwardTimer"] = None


class ForwardTimer:
    """``with ForwardTimer() as timer: ...`` then ``timer.seconds``; only one may be active at a time."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._start = 0.0
        self._handles = []

    def __enter__(self) -> "ForwardTimer":
        global _active
        if _active is not None:
            raise RuntimeError("A ForwardTimer is already active; nest none inside another.")
        _active = self
        self._handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: self._enter()),
            torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: self._exit()),
        ]
        return self

    def __exit__(self, *exc) -> None:
        global _active
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._depth = 0
        _active = None

    def _enter(self) -> None:
        if self._depth == 0:
            _synchronise()
            self._start = time.perf_counter()
        self._depth += 1

    def _exit(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            _synchronise()
            self.seconds += time.perf_counter() - self._start


@contextmanager
def forward_region():
    """Mark a forward pass that is not a single module call (e.g. a compiled step function)."""
    timer = _active
    if timer is None:
        yield
        return
    timer._enter()
    try:
        yield
    finally:
        timer._exit()


def needs_synchronise(device: torch.device) -> bool:
    """Whether work queued on ``device`` may still be running when the host reads the clock (CUDA's kernels)."""
    return device.type == "cuda"


def device_clock(device: torch.device) -> float:
    """``time.perf_counter()`` once ``device`` has finished its queued work.

    Without the synchronisation, a stage that only launches kernels (drafting, a verify pass) would record
    its launch time, and the next stage that reads a result (the acceptor) would absorb the GPU's work:
    per-stage costs, and the tree sizing built on them, would be wrong. On the CPU nothing is queued and
    no synchronisation is made. On CUDA each boundary drains the GPU, so the host cannot queue the next
    stage behind the current one; after the acceptor's read the GPU is idle anyway, so this costs little.
    """
    if needs_synchronise(device):
        torch.cuda.synchronize(device)
    return time.perf_counter()


def active_timer() -> Optional[ForwardTimer]:
    return _active


def _synchronise() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
