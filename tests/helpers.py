"""Shared fixtures-as-functions: tiny models are cached per (arch, seed) so tests stay fast."""

from contextlib import contextmanager
from functools import lru_cache

import torch

from spec import AutoregressiveDecoder
from spec.testing.models import tiny_model

ARCHS = ("llama", "qwen2", "mistral", "gpt2")
LLAMA_FAMILY = ("llama", "qwen2", "mistral")  # what the fast verifier runs
VOCAB = 96


@lru_cache(maxsize=None)
def model(arch: str, seed: int = 0, **overrides):
    return tiny_model(arch, seed=seed, **({"vocab_size": VOCAB} | overrides))


def prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


@lru_cache(maxsize=256)
def _reference(arch: str, prompt_key: tuple, max_new_tokens: int) -> torch.Tensor:
    return AutoregressiveDecoder(model(arch)).generate(torch.tensor([prompt_key]), max_new_tokens).sequences


def reference(arch: str, prompt_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The model's own greedy continuation (cached)."""
    return _reference(arch, tuple(prompt_ids.flatten().tolist()), max_new_tokens)


@contextmanager
def config_override(m, **values):
    """Set ``m.config`` attributes for the block and restore them even when the block fails:
    ``model(...)`` is cached and shared, so a leaked setting would change other tests."""
    missing = object()
    saved = {key: getattr(m.config, key, missing) for key in values}
    for key, value in values.items():
        setattr(m.config, key, value)
    try:
        yield m
    finally:
        for key, value in saved.items():
            if value is missing:
                delattr(m.config, key)
            else:
                setattr(m.config, key, value)


class LogitsTable:
    """Target or draft logits ``[vocab]`` float64 for each token path, random but fixed by ``seed``
    (``sharpness`` scales them): a stand-in model for the exact composition checks."""

    def __init__(self, vocab: int, seed: int, sharpness: float):
        self.vocab, self.sharpness, self.g, self.cache = vocab, sharpness, torch.Generator().manual_seed(seed), {}

    def __call__(self, path):
        if path not in self.cache:
            self.cache[path] = torch.randn(self.vocab, generator=self.g, dtype=torch.float64) * self.sharpness
        return self.cache[path]


def verify_steps(verifier, prefix: torch.Tensor, plan, seed: int = 0) -> list:
    """Prefill ``prefix``, then verify random tokens on each (tree, path) of ``plan`` and commit the path;
    returns the prefill's hidden states, then every step's logits."""
    from spec.protocols import Draft

    g = torch.Generator().manual_seed(seed)
    outputs = [verifier.prefill(prefix)]
    for tree, path in plan:
        tokens = torch.randint(0, VOCAB, (tree.num_nodes,), generator=g)
        outputs.append(verifier.verify(Draft(tree=tree, tokens=tokens)).logits)
        verifier.commit(path)
    return outputs


def eagle3_published_tensors(drafter, layer_prefix: str, vocab: int) -> dict:
    """An EAGLE-3 drafter's tensors as published layouts name them: the decoder layer under ``layer_prefix``
    (``midlayer.`` in SafeAILab's, ``layers.0.`` in speculators'), ``hidden_norm`` inside it, ``d2t`` as
    offsets and ``t2d`` as a mask over the ``vocab`` target tokens."""
    tensors = {}
    for k, v in drafter.heads.state_dict().items():
        name = f"{layer_prefix}hidden_norm.weight" if k == "hidden_norm.weight" else (
            layer_prefix + k[len("layer."):] if k.startswith("layer.") else k)
        tensors[name] = v.detach().clone()
    ids = drafter.heads.d2t.to(torch.long)
    tensors["d2t"] = ids - torch.arange(ids.numel())
    tensors["t2d"] = torch.zeros(vocab, dtype=torch.bool).index_fill_(0, ids, True)
    return tensors
