"""Medusa heads in the layouts they are published and served in, to and from ``MedusaDrafter``.

Layouts (tensor names; ``h`` a head, ``l`` a residual block, ``L`` the number of blocks):

* ``"medusa"`` (FasterDecoding/Medusa, Medusa-1): ``config.json`` with ``medusa_num_heads``,
  ``medusa_num_layers``, ``base_model_name_or_path``; ``medusa_lm_head.safetensors`` (or the pickled
  ``medusa_lm_head.pt``) holding ``{h}.{l}.linear.weight`` ``[H, H]``, ``{h}.{l}.linear.bias`` ``[H]`` and
  ``{h}.{L}.weight`` ``[V, H]``. Heads without ``{h}.{L}.weight`` share the base model's lm_head. The
  published configs are not trusted for sizes (one states 2 heads for a file holding 5): heads and
  blocks are counted from the tensor names.
* ``"medusa2"`` (Medusa-2, read only): the fine-tuned base model's weights with the heads beside them as
  ``medusa_head.{h}.{l}.linear.*`` / ``medusa_head.{h}.{L}.weight``, in ``model.safetensors`` (possibly
  sharded, with ``model.safetensors.index.json``) or ``pytorch_model.bin``. The heads belong to that
  fine-tuned model: its ``lm_head.weight`` must equal the model's they are bound to.
* ``"vllm-medusa"`` (vLLM's Medusa model): ``config.json`` with ``num_heads``, ``num_hidden_layers``,
  ``hidden_size``, ``vocab_size``, ``truncated_vocab_size``, ``medusa_fc_bias``; ``model.safetensors``
  holding ``blocks.{h}.layers.{l}.weight`` (and ``.bias`` only when ``medusa_fc_bias``: vLLM builds its
  blocks without a bias otherwise, and drops one it finds), ``lm_heads.{h}.weight`` ``[K, H]`` and, when
  ``K < V``, ``token_map`` ``[K]`` (draft index to token id).

Imported heads carry no fingerprint: :func:`import_medusa` binds them to the model given, refusing a
hidden size, vocabulary or (Medusa-2) lm_head that disagrees, and ``save_pretrained`` then records the
model's fingerprint as for heads trained here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import attrs
import torch

from spec.drafters import MedusaDrafter
from spec.drafters.draft_vocab import DraftVocabulary
from spec.drafters.medusa import MedusaHeads
from spec.errors import CheckpointError, ConfigurationError, IncompatibleDrafterError
from spec.interop.tensors import first_file, read_config, read_tensors, write_safetensors
from spec.io.atomic import replace_directory
from spec.io.files import read_json
from spec.models import hidden_size, lm_head, model_placement, output_vocab_size

MEDUSA_LAYOUTS = ("medusa", "medusa2", "vllm-medusa")
_BLOCK = re.compile(r"^(\d+)\.(\d+)\.linear\.(weight|bias)$")
_PROJECTION = re.compile(r"^(\d+)\.(\d+)\.weight$")
_VLLM_BLOCK = re.compile(r"^blocks\.(\d+)\.layers\.(\d+)\.(weight|bias)$")
_VLLM_HEAD = re.compile(r"^lm_heads\.(\d+)\.weight$")


@attrs.frozen
class MedusaFile:
    """Heads read from a published layout, before binding to a model.

    ``blocks[h][l]``: ``(weight [H, H], bias [H] or None)``; ``projections[h]``: ``[K, H]`` or None (the
    base model's lm_head); ``token_map``: ``[K]`` token ids when the projections cover K < V tokens;
    ``lm_head``: ``[V, H]``, the fine-tuned base's own (Medusa-2 only).
    """

    blocks: list = attrs.field()
    projections: list = attrs.field()
    token_map: Optional[torch.Tensor] = None
    lm_head: Optional[torch.Tensor] = None

    @property
    def num_heads(self) -> int:
        return len(self.blocks)

    @property
    def num_layers(self) -> int:
        return len(self.blocks[0])


def _heads_from_keys(tensors: dict[str, torch.Tensor], where: str) -> MedusaFile:
    """Medusa-1 names (``{h}.{l}.linear.*``, ``{h}.{L}.weight``), counted from the names themselves."""
    blocks: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    projections: dict[int, dict[int, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if (m := _BLOCK.match(name)) is not None:
            blocks.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = tensor
        elif (m := _PROJECTION.match(name)) is not None:
            projections.setdefault(int(m[1]), {})[int(m[2])] = tensor
        else:
            raise CheckpointError(f"{where} holds {name!r}, which is not a Medusa head tensor "
                                  "({h}.{l}.linear.weight/bias or {h}.{L}.weight); is it another format?")
    return _assemble(blocks, projections, where)


def _assemble(blocks: dict, projections: dict, where: str, token_map: Optional[torch.Tensor] = None,
              lm: Optional[torch.Tensor] = None) -> MedusaFile:
    if not blocks and not projections:
        raise CheckpointError(f"{where} holds no Medusa heads.")
    heads = sorted(set(blocks) | set(projections))
    if heads != list(range(len(heads))):
        raise CheckpointError(f"{where}: heads are numbered {heads}, not 0..{len(heads) - 1}; the file is incomplete.")
    layer_counts = {h: len(blocks.get(h, {})) for h in heads}
    if len(set(layer_counts.values())) != 1:
        raise CheckpointError(f"{where}: heads have different numbers of residual blocks {layer_counts}.")
    num_layers = layer_counts[0]
    out_blocks, out_projections = [], []
    for h in heads:
        if sorted(blocks.get(h, {})) != list(range(num_layers)) or any("weight" not in b for b in blocks.get(h, {}).values()):
            raise CheckpointError(f"{where}: head {h}'s residual blocks are not numbered 0..{num_layers - 1} "
                                  "with a weight each; the file is incomplete.")
        out_blocks.append([(blocks[h][l]["weight"], blocks[h][l].get("bias")) for l in range(num_layers)])
        own = projections.get(h, {})
        if own and list(own) != [num_layers]:
            raise CheckpointError(f"{where}: head {h}'s vocabulary projection is at index {list(own)}, expected "
                                  f"{num_layers} (after its {num_layers} blocks).")
        out_projections.append(own.get(num_layers))
    if len({p is None for p in out_projections}) > 1:
        raise CheckpointError(f"{where}: some heads have their own vocabulary projection and some do not.")
    return MedusaFile(blocks=out_blocks, projections=out_projections, token_map=token_map, lm_head=lm)


def _model_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) Hugging Face model checkpoint."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        data = read_json(index, "shard index", CheckpointError, CheckpointError)
        shards = sorted(set(data.get("weight_map", {}).values())) if isinstance(data, dict) else []
        if not shards:
            raise CheckpointError(f"{index} lists no shards in weight_map.")
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(read_tensors(directory / Path(shard).name))
        return tensors
    return read_tensors(first_file(directory, ("model.safetensors", "pytorch_model.bin"), "model weights"))


def detect_layout(directory: str | os.PathLike) -> str:
    """Which of :data:`MEDUSA_LAYOUTS` ``directory`` holds, from its file names and config."""
    directory = Path(directory)
    if any((directory / n).exists() for n in ("medusa_lm_head.safetensors", "medusa_lm_head.pt")):
        return "medusa"
    config = read_config(directory)
    if config.get("model_type") == "medusa" or "num_heads" in config and "truncated_vocab_size" in config:
        return "vllm-medusa"
    if "medusa_num_heads" in config:
        return "medusa2"
    raise CheckpointError(f"{directory} is none of the Medusa layouts {MEDUSA_LAYOUTS}: no medusa_lm_head file and "
                          "no Medusa config; pass the layout explicitly if the files are named otherwise.")


def read_medusa(directory: str | os.PathLike, layout: str = "auto") -> MedusaFile:
    """The heads in ``directory`` (``layout`` one of :data:`MEDUSA_LAYOUTS`, or ``"auto"``), not yet bound."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory of Medusa heads.")
    layout = detect_layout(directory) if layout == "auto" else layout
    if layout == "medusa":
        path = first_file(directory, ("medusa_lm_head.safetensors", "medusa_lm_head.pt"), "medusa_lm_head file")
        return _heads_from_keys(read_tensors(path), str(path))
    if layout == "medusa2":
        tensors = _model_weights(directory)
        prefix = "medusa_head."
        heads = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not heads:
            raise CheckpointError(f"{directory}'s weights hold no medusa_head.* tensors; it is not a Medusa-2 checkpoint.")
        found = _heads_from_keys(heads, str(directory))
        return attrs.evolve(found, lm_head=tensors.get("lm_head.weight"))
    if layout == "vllm-medusa":
        return _read_vllm(directory)
    raise ConfigurationError(f"Unknown Medusa layout {layout!r}; use one of {MEDUSA_LAYOUTS} or 'auto'.")


def _read_vllm(directory: Path) -> MedusaFile:
    config = read_config(directory)
    path = first_file(directory, ("model.safetensors", "pytorch_model.bin"), "weights file")
    blocks: dict = {}
    projections: dict = {}
    token_map = None
    for name, tensor in read_tensors(path).items():
        name = name.removeprefix("medusa_heads.")
        if (m := _VLLM_BLOCK.match(name)) is not None:
            if m[3] == "bias" and not config.get("medusa_fc_bias", False):
                continue  # vLLM builds its blocks without a bias unless medusa_fc_bias: it would not use this one
            blocks.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = tensor
        elif (m := _VLLM_HEAD.match(name)) is not None:
            projections.setdefault(int(m[1]), {})[-1] = tensor
        elif name == "lm_head.weight" and config.get("original_lm_head", False):
            projections.setdefault(0, {})[-1] = tensor
        elif name == "token_map":
            token_map = tensor.to(torch.long)
        else:
            raise CheckpointError(f"{path} holds {name!r}, not a tensor of vLLM's Medusa layout.")
    if config.get("original_lm_head", False) and 0 in projections:
        projections = {h: projections[0] for h in blocks}  # one projection shared by every head
    num_layers = len(blocks.get(0, {}))
    return _assemble(blocks, {h: {num_layers: p[-1]} for h, p in projections.items()}, str(path), token_map)


def import_medusa(directory: str | os.PathLike, model, layout: str = "auto", candidates: str = "top_k") -> MedusaDrafter:
    """A :class:`MedusaDrafter` for ``model`` from published heads; mismatches are refused, naming them."""
    found = read_medusa(directory, layout)
    hidden, vocab = hidden_size(model), output_vocab_size(model)
    where = str(directory)
    for h, head in enumerate(found.blocks):
        for weight, bias in head:
            if tuple(weight.shape) != (hidden, hidden) or (bias is not None and tuple(bias.shape) != (hidden,)):
                raise IncompatibleDrafterError(
                    f"{where}: head {h}'s blocks are {tuple(weight.shape)} but the model's hidden size is {hidden}; "
                    "these heads were trained for another model.")
    rows = vocab if found.token_map is None else found.token_map.numel()
    for h, projection in enumerate(found.projections):
        if projection is not None and tuple(projection.shape) != (rows, hidden):
            raise IncompatibleDrafterError(
                f"{where}: head {h} projects onto {projection.shape[0]} tokens of width {projection.shape[1]}, but "
                f"the model has {vocab} tokens and hidden size {hidden}; these heads were trained for another model.")
    if found.token_map is not None and (found.token_map.numel() > vocab or int(found.token_map.max()) >= vocab):
        raise IncompatibleDrafterError(f"{where}: token_map names ids up to {int(found.token_map.max())} but the "
                                       f"model has {vocab} tokens.")
    if found.lm_head is not None and not torch.equal(found.lm_head.to(lm_head(model).weight), lm_head(model).weight):
        raise IncompatibleDrafterError(
            f"{where}: these Medusa-2 heads were trained with their base model, whose lm_head differs from this "
            "model's; load the Medusa-2 checkpoint itself as the model.")
    heads = MedusaHeads(hidden, vocab, found.num_heads, found.num_layers).to(**model_placement(model))
    with torch.no_grad():
        for module, head in zip(heads.heads, found.blocks):
            for block, (weight, bias) in zip(module[:-1], head):
                block.linear.weight.copy_(weight)
                block.linear.bias.copy_(torch.zeros(hidden) if bias is None else bias)
        for module, projection in zip(heads.heads, found.projections):
            if projection is None:
                module[-1].weight.copy_(lm_head(model).weight)
            elif found.token_map is None:
                module[-1].weight.copy_(projection)
            else:  # rows outside the map are never read: the drafter projects onto the map's tokens only
                module[-1].weight.zero_()
                module[-1].weight[found.token_map] = projection.to(module[-1].weight)
    drafter = MedusaDrafter(model, heads, candidates)
    if found.token_map is not None:
        drafter.use_draft_vocab(DraftVocabulary(vocab_size=vocab, token_ids=found.token_map.clone()))
    return drafter


def export_medusa(drafter: MedusaDrafter, directory: str | os.PathLike, layout: str = "medusa") -> Path:
    """Write ``drafter``'s heads in ``layout`` ("medusa" or "vllm-medusa"); returns the directory."""
    heads = drafter.heads
    if heads.heads[0][-1].bias is not None:
        raise ConfigurationError("These Medusa heads have a bias on their vocabulary projection, which neither "
                                 "Medusa's nor vLLM's layout has; train them with lm_head_bias=False to export.")
    model = drafter.model
    base = getattr(model.config, "_name_or_path", "") or ""
    if layout == "medusa":
        tensors = {}
        for h, module in enumerate(heads.heads):
            for l, block in enumerate(module[:-1]):
                tensors[f"{h}.{l}.linear.weight"] = block.linear.weight
                tensors[f"{h}.{l}.linear.bias"] = block.linear.bias
            tensors[f"{h}.{heads.num_layers}.weight"] = module[-1].weight
        config = {"medusa_num_heads": drafter.num_heads, "medusa_num_layers": heads.num_layers,
                  "base_model_name_or_path": base, "hidden_size": heads.hidden, "vocab_size": heads.vocab}
        files = ("config.json", "medusa_lm_head.safetensors")
    elif layout == "vllm-medusa":
        token_ids = None if drafter.draft_vocab is None else drafter.draft_vocab.token_ids
        tensors = {}
        for h, module in enumerate(heads.heads):
            for l, block in enumerate(module[:-1]):
                tensors[f"blocks.{h}.layers.{l}.weight"] = block.linear.weight
                tensors[f"blocks.{h}.layers.{l}.bias"] = block.linear.bias
            weight = module[-1].weight
            tensors[f"lm_heads.{h}.weight"] = weight if token_ids is None else weight[token_ids.to(weight.device)]
        if token_ids is not None:
            tensors["token_map"] = token_ids
        config = {"model_type": "medusa", "architectures": ["MedusaModel"], "hidden_size": heads.hidden,
                  "vocab_size": heads.vocab, "num_heads": drafter.num_heads, "num_hidden_layers": heads.num_layers,
                  "truncated_vocab_size": heads.vocab if token_ids is None else int(token_ids.numel()),
                  "medusa_fc_bias": True}  # without it vLLM drops the blocks' biases
        files = ("config.json", "model.safetensors")
    else:
        raise ConfigurationError(f"Medusa heads export to 'medusa' or 'vllm-medusa', not {layout!r} "
                                 "(Medusa-2 checkpoints are a whole fine-tuned model: export the heads as 'medusa').")
    with replace_directory(directory, files, "exported heads directory") as staging:
        write_safetensors(staging / files[1], tensors)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Path(directory)
