"""Training: one accelerate loop, recipes as objectives, data packing (text, or conversations with a loss mask on
the assistant's tokens), resumable checkpoints."""

from spec.training.chat import (
    ChatTemplateError,
    ConversationError,
    conversation_blocks,
    is_conversation_data,
    iter_conversations,
    render_conversation,
)
from spec.training.data import DataError, TokenBlocks, iter_texts, pack_blocks
from spec.training.loop import Objective, TrainConfig, TrainResult, train
from spec.training.objectives import LanguageModelObjective, Medusa2Objective, MedusaObjective, shifted_head_targets

__all__ = ["ChatTemplateError", "ConversationError", "DataError", "LanguageModelObjective", "Medusa2Objective",
           "MedusaObjective", "Objective", "TokenBlocks", "TrainConfig", "TrainResult", "conversation_blocks",
           "is_conversation_data", "iter_conversations", "iter_texts", "pack_blocks", "render_conversation",
           "shifted_head_targets", "train"]
