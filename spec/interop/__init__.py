"""Published head and tree formats in and out: Medusa-1/2 and vLLM's Medusa layout for heads; Medusa,
vLLM, SGLang and TensorRT-LLM settings for trees. No code from those projects: their layouts are read and
written from their documented key names. See docs/interop.md."""

from spec.interop.medusa import MEDUSA_LAYOUTS, export_medusa, import_medusa, read_medusa
from spec.interop.tensors import read_tensors
from spec.interop.trees import TREE_TARGETS, tree_for_engine, tree_from_token_tree, tree_to_token_tree

__all__ = ["MEDUSA_LAYOUTS", "TREE_TARGETS", "export_medusa", "import_medusa", "read_medusa", "read_tensors",
           "tree_for_engine", "tree_from_token_tree", "tree_to_token_tree"]
