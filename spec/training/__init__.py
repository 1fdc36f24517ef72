"""Training: one accelerate loop, recipes as objectives, data packing, resumable checkpoints."""

from spec.training.data import DataError, iter_texts, pack_blocks
from spec.training.loop import Objective, TrainConfig, TrainResult, train
from spec.training.objectives import LanguageModelObjective, Medusa2Objective, MedusaObjective, shifted_head_targets

__all__ = ["DataError", "LanguageModelObjective", "Medusa2Objective", "MedusaObjective", "Objective", "TrainConfig", "TrainResult", "iter_texts",
           "pack_blocks", "shifted_head_targets", "train"]
