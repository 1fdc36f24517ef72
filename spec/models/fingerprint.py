"""A model fingerprint: which base model a set of draft heads belongs to.

Draft heads only make sense on the model they were trained for. The fingerprint
records the architecture and sizes plus a few dozen weight values probed at fixed
positions of the input and output embeddings. Probed values are compared with a
tolerance, so the same weights in float32, bfloat16 or float64 match while a
different or fine-tuned model does not.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import torch

from spec.models.facts import lm_head, hidden_size, output_vocab_size

_NUM_PROBES = 32
_RTOL = 2e-2
_ATOL = 1e-4


def _probe(weight: torch.Tensor, count: int, salt: int) -> list[float]:
    rng = np.random.default_rng(12345 + salt)
    flat_index = rng.integers(0, weight.numel(), size=count)
    rows = torch.as_tensor(flat_index // weight.shape[1], device=weight.device)
    cols = torch.as_tensor(flat_index % weight.shape[1], device=weight.device)
    return [float(v) for v in weight.detach()[rows, cols].double().cpu()]


@attrs.frozen
class ModelFingerprint:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    probe: tuple[float, ...] = attrs.field(converter=tuple)

    @classmethod
    def of(cls, model) -> "ModelFingerprint":
        config = model.config
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 0
        out_w = lm_head(model).weight
        in_w = model.get_input_embeddings().weight
        probe = _probe(in_w, _NUM_PROBES // 2, 0) + _probe(out_w, _NUM_PROBES // 2, 1)
        arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
        return cls(arch, output_vocab_size(model), hidden_size(model), int(layers), probe)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, value_serializer=lambda inst, field, v: list(v) if isinstance(v, tuple) else v)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelFingerprint":
        return cls(**data)

    def mismatch(self, other: "ModelFingerprint") -> str | None:
        """None when both describe the same weights; otherwise what differs, in words."""
        for name in ("vocab_size", "hidden_size", "num_layers"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"{name} is {mine} for the heads' model but {theirs} for this model"
        if len(self.probe) != len(other.probe) or not np.allclose(self.probe, other.probe, rtol=_RTOL, atol=_ATOL):
            return "the weights differ (fingerprint probe values do not match)"
        return None
