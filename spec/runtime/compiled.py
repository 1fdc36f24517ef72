"""``torch.compile`` a step function, falling back to eager when compilation is unavailable.

Compilation can fail for reasons that have nothing to do with the model: no C++
compiler for inductor on CPU, an unsupported Python or platform, a backend bug.
The step is a pure function of its tensor arguments plus in-place cache writes at
given rows, so re-running it eagerly after a failed compiled call gives the same
result. If the eager run succeeds, compilation was at fault: we warn once and stay
eager from then on. If it fails too, the error is the caller's and propagates, and
compilation stays on. Running out of memory is never treated as a compiler failure.

The step is compiled with ``fullgraph=True``. With ``fullgraph=False`` Dynamo hides two
fallbacks behind a compiled-looking callable: a graph break runs part of the step
eagerly, and once a code object hits ``torch._dynamo.config.recompile_limit`` (8,
shared by every caller of the same function) Dynamo silently runs it eagerly from
then on (checked: with ``recompile_limit=1`` a second tree size ran eagerly while
``compiled`` still said True). With ``fullgraph=True`` both raise, so the fallback
below catches them, warns and ``compiled`` tells the truth.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch


RECOMPILE_LIMIT = 64


class CompiledStep:
    """Calls ``fn`` compiled (``mode``: inductor mode, e.g. ``reduce-overhead`` for CUDA graphs) or eagerly."""

    def __init__(self, fn: Callable, enabled: bool, mode: Optional[str] = None,
                 on_fallback: Optional[Callable[[], None]] = None, dynamic: Optional[bool] = None,
                 what: str = "verifier") -> None:
        self.fn = fn
        self.what = what
        self.mode = mode
        self.on_fallback = on_fallback
        self.failure: Optional[str] = None
        self._compiled: Optional[Callable] = None
        if enabled:
            # Dynamo's recompile limit counts per code object, and every verifier runs the same step function:
            # each model structure (or feature set) a process verifies is one more compile of it. The default (8)
            # is reached by a benchmark of a few drafters, or a test session, after which the step would fall
            # back to eager; raise it (never lower it) so that only genuinely unbounded shapes exhaust it.
            dynamo_config = torch._dynamo.config
            try:
                dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
            except AttributeError:  # another torch version's name for it (or none): keep its default
                pass
            try:
                self._compiled = torch.compile(fn, mode=mode, dynamic=dynamic, fullgraph=True)
            except Exception as error:  # torch.compile itself can refuse (e.g. unsupported Python)
                self._give_up(error)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args):
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:
                result = self.fn(*args)  # raises (the caller's error) unless the compiler was at fault
                self._give_up(error)
                return result
        return self.fn(*args)

    def _give_up(self, error: Exception) -> None:
        # The whole message and its causes: Dynamo's first line is often only "Hard failure due to ...".
        self.failure = describe_error(error)
        self._compiled = None
        warnings.warn(f"torch.compile failed ({self.failure}); the {self.what} runs eagerly instead.",
                      RuntimeWarning, stacklevel=3)
        if self.on_fallback is not None:
            self.on_fallback()


def describe_error(error: BaseException) -> str:
    """``Type: message`` of ``error`` and of each explicit cause (``raise ... from``), all lines kept."""
    parts, seen = [], set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {str(current).strip()}")
        current = current.__cause__
    return "\n  caused by ".join(parts)
