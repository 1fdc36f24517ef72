"""Kangaroo (Liu et al., 2024, "Kangaroo: Lossless Self-Speculative Decoding via Double Early Exiting").

The draft model is the target itself, cut after ``exit_layer`` layers, plus a small
adapter: ``y = x + Attn(Norm1(x))``, ``Norm2(y)``, then the target's frozen lm_head.
The adapter's attention is the model's own attention class with its own KV cache over
the committed positions' shallow states (output projection zero-initialised, so an
untrained adapter is the identity plus a norm).

Two early exits: drafting exits the network at ``exit_layer`` (the first), and a
branch stops growing when the probability of its last drafted token is below
``threshold`` (the second): that token is still verified, but not extended. The root
is always extended. With a chain this is the paper's algorithm; with a tree, each
extended node gets its top-k children (the paper's open extension).

Built on a :class:`SelfDraftVerifier`, whose cache it shares: every drafted token
passes the shallow layers once, here, writing their keys and values into that cache;
its draft carries each node's shallow state and cache row (``Draft.node_states``,
``Draft.cache_rows``), so a tree builder may prune it and the verifier runs only the
deep layers over the nodes kept. ``commit`` reads the shallow states the verifier
reports (``traits.features``).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn
from transformers import DynamicCache

from spec.drafters.checkpointing import check_model_dims, load_drafter, load_state_strict, save_drafter
from spec.drafters.tree_filling import check_tree_fits, path_log_confidence
from spec.errors import ConfigurationError, InputError, ShapeError
from spec.models import ModelFingerprint, cache_kwargs, hidden_size, model_placement, output_vocab_size
from spec.protocols import CandidateKind, CandidateTree, Draft, DraftContext, DrafterTraits, SamplingParams
from spec.runtime import SelfDraftVerifier
from spec.runtime.masks import additive_mask


class KangarooAdapter(nn.Module):
    """Norm, one attention block of the model's own architecture, norm."""

    def __init__(self, model) -> None:
        super().__init__()
        backbone = model.model
        template = backbone.layers[0]
        self.norm_in = type(template.input_layernorm)(hidden_size(model), eps=model.config.rms_norm_eps)
        self.attention = type(template.self_attn)(model.config, layer_idx=0)
        self.norm_out = type(backbone.norm)(hidden_size(model), eps=model.config.rms_norm_eps)
        std = getattr(model.config, "initializer_range", 0.02)
        with torch.no_grad():
            for module in self.attention.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
            self.attention.o_proj.weight.zero_()  # starts as the identity on the residual stream

    def forward(self, x: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, rotary,
                cache: Optional[DynamicCache]) -> torch.Tensor:
        attended, _ = self.attention(self.norm_in(x), attention_mask=mask, position_ids=position_ids,
                                     **cache_kwargs(self.attention, cache), position_embeddings=rotary)
        return self.norm_out(x + attended)


class KangarooDrafter:
    """Self-drafts with the target's shallow layers + adapter; pair it with ``self.verifier``."""

    drafter_type = "kangaroo"

    def __init__(self, verifier: SelfDraftVerifier, adapter: KangarooAdapter, threshold: float = 0.6,
                 max_depth: int = 6) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigurationError(f"threshold must be in [0, 1], got {threshold}.")
        model = verifier.model
        check_model_dims(model, vocab_size=output_vocab_size(model), hidden=hidden_size(model), what="The adapter")
        self.verifier = verifier
        self.state = verifier.state
        self.model = model
        self.adapter = adapter.eval()
        self.threshold = threshold
        self._max_depth = max_depth
        self.reset()

    @classmethod
    def from_model(cls, model, exit_layer: int, threshold: float = 0.6, max_depth: int = 6,
                   seed: Optional[int] = None, max_length: Optional[int] = None) -> "KangarooDrafter":
        """A fresh adapter and its verifier; use ``drafter.verifier`` as the pipeline's verifier.

        ``max_length``: the longest sequence the verifier's static cache holds (default: the model's context
        capped at 4096; see ``SelfDraftVerifier``)."""
        verifier = SelfDraftVerifier(model, exit_layer, max_length=max_length)  # first: it refuses unsupported models and exit layers
        if seed is not None:
            torch.manual_seed(seed)
        adapter = KangarooAdapter(model).to(**model_placement(model))
        return cls(verifier, adapter, threshold, max_depth)

    # ---- checkpoints ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        hyper = {"exit_layer": self.state.exit_layer, "threshold": self.threshold, "max_depth": self._max_depth}
        save_drafter(directory, self.adapter, self.drafter_type, hyper, ModelFingerprint.of(self.model))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, model, threshold: Optional[float] = None,
                        max_length: Optional[int] = None) -> "KangarooDrafter":
        hyper, state, _ = load_drafter(directory, model, cls.drafter_type, {"exit_layer", "threshold", "max_depth"},
                                    build=lambda hyper: KangarooAdapter(model))
        adapter = KangarooAdapter(model).to(**model_placement(model))
        load_state_strict(adapter, state, directory)
        return cls(SelfDraftVerifier(model, hyper["exit_layer"], max_length=max_length), adapter,
                   hyper["threshold"] if threshold is None else threshold, hyper["max_depth"])

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.adapter.parameters())

    @property
    def traits(self) -> DrafterTraits:
        # Its verifier shares the shallow layers' cache; the per-node work travels in the draft, so it prunes.
        return DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC}, log_confidence=True, prunable=True,
                             verifier=self.verifier, features=self.verifier.traits.features)

    # ---- Drafter protocol ------------------------------------------------------------------
    @property
    def max_depth(self) -> int:
        return self._max_depth

    def reset(self) -> None:
        self._adapter_cache = DynamicCache()
        self._adapter_length = 0

    def commit(self, tokens: torch.Tensor, hidden_states: torch.Tensor) -> None:
        """Advance the adapter over the committed positions' shallow states ``[m, H]`` (``traits.features``)."""
        if hidden_states.dim() != 2 or hidden_states.shape[0] != tokens.shape[0]:
            raise ShapeError(f"KangarooDrafter.commit takes one hidden state per token, got {tokens.shape[0]} tokens "
                             f"and hidden states of shape {tuple(hidden_states.shape)}.")
        self._crop_adapter()
        m = hidden_states.shape[0]
        if m:
            device = self.state.device
            visible = torch.ones(m, self._adapter_length + m, dtype=torch.bool, device=device)
            self._adapter(hidden_states.to(device), visible.tril(self._adapter_length),
                          torch.arange(self._adapter_length, self._adapter_length + m, device=device))
        self._adapter_length += m

    @torch.no_grad()
    def propose(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
                generator: Optional[torch.Generator] = None) -> Draft:
        check_tree_fits(tree, self._max_depth, output_vocab_size(self.model), "Kangaroo drafter")
        state = self.state
        if state.committed != context.position:
            raise InputError(
                f"The self-draft state has {state.committed} committed tokens but the root is at {context.position}; "
                "use drafter.verifier as the pipeline's verifier."
            )
        # Template node -> index in the draft (breadth-first, kept nodes only) = its drafting order.
        kept: dict[int, int] = {0: 0}
        root = context.root_token  # the context lives on the host: no synchronisation
        tokens = [root]
        node_logprob = [0.0]
        depths = [0]
        frontier = [0]
        shallow, adapted = self._draft_and_adapt([root], [[0]], depths)
        node_states, adapter_states = [shallow], list(adapted)
        extend = {0: True}
        while frontier:
            expanding = [n for n in frontier if tree.children[n] and extend[n]]
            if not expanding:
                break
            rows = torch.stack([adapter_states[kept[n]] for n in expanding])
            logprobs = self.model.lm_head(rows).float().log_softmax(-1)
            top_lp, top_tok = logprobs.topk(tree.max_rank + 1, dim=-1)
            # One read a level (each read of a CUDA tensor waits for the GPU; this was three per node): the
            # candidates, their log-probabilities and probabilities, the latter exponentiated in float32 as the
            # threshold test always took them (float64 holds token ids and float32 values exactly).
            top_tokens, top_logprobs, top_probs = torch.stack(
                [top_tok.double(), top_lp.double(), top_lp.exp().double()]).tolist()
            new_nodes, new_tokens, new_paths = [], [], []
            for row, parent in enumerate(expanding):
                for child in tree.children[parent]:
                    rank = tree.ranks[child]
                    kept[child] = len(tokens)
                    tokens.append(int(top_tokens[row][rank]))
                    node_logprob.append(top_logprobs[row][rank])
                    # The second early exit: a token drafted with low confidence is verified, not extended.
                    extend[child] = top_probs[row][rank] >= self.threshold
                    new_nodes.append(child)
                    new_tokens.append(tokens[-1])
                    new_paths.append([kept[a] for a in tree.path_to(child)])
                    depths.append(tree.depth_list[child])
            shallow, adapted = self._draft_and_adapt(new_tokens, new_paths, depths)
            node_states.append(shallow)
            adapter_states.extend(adapted)
            frontier = new_nodes
        draft_tree = tree.subtree(sorted(kept, key=kept.get))  # breadth-first order of the template
        logprob = torch.tensor(node_logprob, dtype=torch.float32)
        self._crop_adapter()
        # Node i's shallow keys and values sit at cache row committed + i, where it was drafted.
        rows = torch.arange(state.committed, state.committed + len(tokens), device=state.device)
        return Draft(tree=draft_tree, tokens=torch.tensor(tokens, dtype=torch.long), kind=CandidateKind.DETERMINISTIC,
                     log_confidence=path_log_confidence(draft_tree, logprob), node_states=torch.cat(node_states),
                     cache_rows=rows)

    # ---- helpers -------------------------------------------------------------------------------
    def _draft_and_adapt(self, tokens: list[int], paths: list[list[int]],
                         depths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The shallow layers (shared with verification), then the adapter, over the last ``len(tokens)`` nodes.

        ``paths[i]``: drafting indices of node i's path (root first, itself last); ``depths``: every node's
        depth so far. Returns the new nodes' shallow states and adapter outputs, ``[m, H]`` each.
        """
        state, m, k = self.state, len(tokens), len(depths)
        # The new nodes' visibility among this step's nodes [m, k] (each sees its path), built on the host and
        # copied with the token ids and depths in one upload: on CUDA each copy from host memory waits for the
        # stream (this was one copy per node, plus three).
        among = [[0] * k for _ in range(m)]
        for row, path in enumerate(paths):
            for node in path:
                among[row][node] = 1
        packed = torch.tensor(tokens + depths + [v for row in among for v in row], device=state.device)
        ids, all_depths, among_nodes = packed[:m], packed[m : m + k], packed[m + k :].view(m, k).bool()
        visible = torch.cat([among_nodes.new_ones(m, state.committed), among_nodes], dim=1)
        embeddings = state.forward.embed(ids)
        shallow = state.run_layers(embeddings, state.shallow, visible, all_depths, max(depths))
        # The adapter's cache holds committed positions only: the same visibility, shifted to its length.
        adapter_visible = torch.cat([among_nodes.new_ones(m, self._adapter_length), among_nodes], dim=1)
        positions = all_depths[k - m :] + self._adapter_length
        return shallow, self._adapter(shallow, adapter_visible, positions)

    def _adapter(self, shallow: torch.Tensor, visible: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = shallow[None].to(self.adapter.norm_in.weight.dtype)
        position_ids = positions[None]
        rotary = self.state.backbone.rotary_emb(x, position_ids)
        return self.adapter(x, additive_mask(visible, x.dtype), position_ids, rotary, self._adapter_cache)[0]

    def _crop_adapter(self) -> None:
        """Drop the adapter's entries for tree nodes: its cache holds committed positions only."""
        for layer in self._adapter_cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys[:, :, : self._adapter_length]
                layer.values = layer.values[:, :, : self._adapter_length]
