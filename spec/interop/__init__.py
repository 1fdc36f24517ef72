"""Published head and tree formats in and out: Medusa-1/2 and vLLM's Medusa layout, EAGLE-1, EAGLE-3 and the
speculators format for heads; Medusa, vLLM, SGLang and TensorRT-LLM settings for trees. No code from those
projects: their layouts are read and written from their documented key names. See docs/interop.md."""

from spec.interop.eagle import export_eagle, export_eagle3, import_eagle, import_eagle3
from spec.interop.formats import detect_head_format
from spec.interop.medusa import MEDUSA_LAYOUTS, export_medusa, import_medusa, read_medusa
from spec.interop.speculators import (
    SpeculatorsConfig,
    export_speculators,
    import_speculators,
    read_speculators_config,
)
from spec.interop.tensors import read_tensors
from spec.interop.trees import TREE_TARGETS, tree_for_engine, tree_from_token_tree, tree_to_token_tree

__all__ = ["MEDUSA_LAYOUTS", "TREE_TARGETS", "SpeculatorsConfig", "detect_head_format", "export_eagle",
           "export_eagle3", "export_medusa", "export_speculators", "import_eagle", "import_eagle3", "import_medusa",
           "import_speculators", "read_medusa", "read_speculators_config", "read_tensors", "tree_for_engine",
           "tree_from_token_tree", "tree_to_token_tree"]
