"""A ``spec`` tree as the settings of the engines users serve with.

* Medusa (and TensorRT-LLM's ``medusa_choices`` / ``eagle_choices``): a list of rank paths, one per
  non-root node, ``[[0], [1], [0, 0], ...]`` (``spec.trees.tree_to_choices``).
* vLLM: ``speculative_token_tree``, the same paths as a Python literal of tuples,
  ``"[(0,), (1,), (0, 0)]"``, with ``num_speculative_tokens`` equal to their number. vLLM's tree
  attention serves EAGLE-family heads (``method`` ``eagle``/``eagle3``); its Medusa proposer drafts one
  top-1 chain, so Medusa heads get the tree's depth as a chain.
* SGLang builds its EAGLE trees itself from three numbers: steps (depth), top-k (children per node)
  and draft tokens (the verified budget, root included); a fixed shape is passed as the budget it fits in.
* TensorRT-LLM: the LLM API's ``speculative_config`` (``decoding_type``, ``max_draft_len`` and the
  choices), as the YAML ``trtllm-serve --extra_llm_api_options`` reads.

These were written from the engines' documentation; no engine runs on this project's machines, so
each is checked by reading the output back, not by serving it.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from spec.errors import ConfigurationError, InvalidTreeError
from spec.protocols import CandidateTree
from spec.trees import tree_from_choices, tree_to_choices

TREE_TARGETS = ("medusa", "vllm", "sglang", "trtllm-medusa", "trtllm-eagle")


def tree_to_token_tree(tree: CandidateTree) -> str:
    """vLLM's ``speculative_token_tree``: every non-root node's rank path as a tuple."""
    return repr([tuple(path) for path in tree_to_choices(tree)])


def tree_from_token_tree(text: str) -> CandidateTree:
    """The tree of a vLLM ``speculative_token_tree`` string (a literal, never evaluated as code)."""
    try:
        paths = ast.literal_eval(text)
    except (ValueError, SyntaxError) as error:
        raise InvalidTreeError(f"{text!r} is not a token tree literal such as \"[(0,), (1,), (0, 0)]\".") from error
    if not isinstance(paths, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in paths):
        raise InvalidTreeError(f"A token tree is a list of tuples of ranks, got {text!r}.")
    return tree_from_choices([list(p) for p in paths])


def _widest(tree: CandidateTree) -> int:
    return max((len(children) for children in tree.children), default=0)


def tree_for_engine(tree: CandidateTree, engine: str, heads_path: str = "<heads>",
                    method: str = "medusa") -> dict[str, Any]:
    """The settings that give ``engine`` this tree: ``{"config": ..., "command": ..., "note": ...}``.

    ``heads_path``: where the engine finds the exported heads; ``method``: the heads' kind as vLLM names
    it (``medusa``, ``eagle``, ``eagle3``).
    """
    choices = tree_to_choices(tree)
    depth = tree.max_depth
    if engine == "medusa":
        return {"config": {"medusa_choices": choices}, "command": f"medusa_choices = {json.dumps(choices)}"}
    if engine == "vllm":
        if method == "medusa":
            config = {"method": "medusa", "model": heads_path, "num_speculative_tokens": depth}
            note = "vLLM's Medusa proposer drafts a top-1 chain: the tree's depth is kept, its branches are not."
        else:
            config = {"method": method, "model": heads_path, "num_speculative_tokens": len(choices),
                      "speculative_token_tree": tree_to_token_tree(tree)}
            note = "Tree attention needs vLLM's tree attention backend."
        return {"config": config, "command": f"vllm serve <base model> --speculative-config '{json.dumps(config)}'",
                "note": note}
    if engine == "sglang":
        flags = {"--speculative-num-steps": depth, "--speculative-eagle-topk": _widest(tree),
                 "--speculative-num-draft-tokens": tree.num_nodes}
        command = "python -m sglang.launch_server --model-path <base model> --speculative-algorithm EAGLE " \
                  f"--speculative-draft-model-path {heads_path} " + " ".join(f"{k} {v}" for k, v in flags.items())
        return {"config": flags, "command": command}
    if engine in ("trtllm-medusa", "trtllm-eagle"):
        kind = "Medusa" if engine == "trtllm-medusa" else "Eagle"
        config = {"decoding_type": kind, "max_draft_len": len(choices), "speculative_model_dir": heads_path,
                  f"{kind.lower()}_choices": choices}
        if kind == "Medusa":
            config["num_medusa_heads"] = depth
        return {"config": {"speculative_config": config},
                "command": "trtllm-serve <base model> --extra_llm_api_options spec_tree.yaml  "
                           "# spec_tree.yaml: the config above as YAML"}
    raise ConfigurationError(f"Unknown engine {engine!r}; trees export to {', '.join(TREE_TARGETS)}.")
