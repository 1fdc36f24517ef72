"""Running the target model's own layers and caches, for the verifiers and drafters that need it.

One idea per file: ``support`` (which models, one table), ``masks`` (the window rule and the additive
mask), ``attention`` (tree attention kernels), ``static_cache``, ``layers`` (Llama-family layers one by
one), ``compiled`` (torch.compile with an eager fallback), ``shapes`` (per-tree-shape buffers), ``room``
(the context and cache room check), ``context_layer`` (a drafter's extra decoder layer) and
``self_draft`` (the cache a self-drafter shares with its verifier, and that verifier). It imports
no stage: ``spec.verifiers`` and ``spec.drafters`` build on it.
"""

from spec.runtime.context_layer import ContextLayerCache, build_decoder_layer, causal_pass
from spec.runtime.layers import LlamaFamilyForward, unsupported_reason
from spec.runtime.self_draft import SelfDraftState, SelfDraftVerifier
from spec.runtime.static_cache import StaticKVCache
from spec.runtime.support import SUPPORTED_ARCHITECTURES, check_supported

__all__ = ["ContextLayerCache", "LlamaFamilyForward", "SUPPORTED_ARCHITECTURES", "SelfDraftState", "SelfDraftVerifier",
           "StaticKVCache",
           "build_decoder_layer", "causal_pass", "check_supported", "unsupported_reason"]
