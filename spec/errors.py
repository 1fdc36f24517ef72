"""Typed errors. Every refusal says what was wrong and how to fix it.

All errors derive from :class:`SpecError`; most also derive from the builtin a
caller would naturally catch (``ValueError``, ``OSError``...), so generic code
keeps working.
"""

from __future__ import annotations


class SpecError(Exception):
    """Base class of every error `spec` raises on purpose."""


class InvalidTreeError(SpecError, ValueError):
    """A candidate tree is malformed (bad parents, order, ranks, cycles, empty)."""


class TreeTooDeepError(InvalidTreeError):
    """A tree is deeper than the drafter can fill (one depth per draft head)."""


class ShapeError(SpecError, ValueError):
    """A tensor passed between stages has the wrong shape, dtype or rank."""


class SamplingParamsError(SpecError, ValueError):
    """Invalid sampling parameters (temperature, top_k, top_p, seed)."""


class InputError(SpecError, ValueError):
    """Invalid arguments to ``generate`` (empty prompt, batch size, token ids...)."""


class ContextLengthError(InputError):
    """Prompt plus ``max_new_tokens`` does not fit in the model's context."""


class IncompatibleDrafterError(SpecError, ValueError):
    """Draft heads belong to another model (fingerprint, vocab or hidden size differ)."""


class CheckpointError(SpecError, OSError):
    """A checkpoint is missing, truncated, corrupt, pickled, or its config is invalid."""


class IntegrityError(CheckpointError):
    """A saved file does not match the SHA-256 recorded when it was written, or holds values no save
    produces (non-finite or integer weights): it was corrupted or changed after saving."""


class PathError(SpecError, OSError):
    """A path cannot be used: it does not exist, is the wrong kind (a directory for a file...), cannot be
    read or written, or is a name that would leave the directory it must stay in."""


class NonFiniteLogitsError(SpecError, FloatingPointError):
    """The model produced NaN or +inf logits, or a row with no finite entry."""


class ConfigurationError(SpecError, ValueError):
    """A component was constructed with invalid settings (negative head count, unknown mode...)."""


class IncompatibleStagesError(ConfigurationError):
    """Stages that cannot be composed (a self-drafter without its verifier, a pruning builder on a
    drafter whose drafts cannot be pruned, candidates the acceptor's rule is not defined for...)."""


class OptionError(ConfigurationError):
    """A command-line option has a value the command cannot use; checked before any work starts."""


class DataError(InputError):
    """Training data that cannot be used: missing, empty, malformed, or blocks over the context."""


class UnsupportedError(SpecError, NotImplementedError):
    """A valid request this component does not support (say so, and what does)."""


class TokenizerError(ConfigurationError):
    """A tokenizer that cannot be used with the model or the request: its vocabulary holds ids the model has
    no logits for, or chat messages were given to a tokenizer without a chat template."""


class ConcurrentUseError(SpecError, RuntimeError):
    """A second ``generate`` on a speculative decoder (or on stages another decoder is running) while the
    first is still running: its stages hold one sequence's caches, so the second call is refused, not
    interleaved."""


class StreamerError(SpecError, RuntimeError):
    """The streamer passed to ``generate`` raised; generation stopped cleanly (the decoder stays usable).
    The streamer's own exception is the ``__cause__``."""


class TrainingDivergedError(SpecError, FloatingPointError):
    """Training produced a non-finite loss or gradient: the run stops before saving the broken weights."""
