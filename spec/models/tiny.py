"""Tiny random-initialised causal LMs, built from a config (no download): for tests, and for the demo's
``--random-model`` mode, which shows the mechanics without any shipped files."""

from __future__ import annotations

import torch
import transformers

ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")


def tiny_config(arch: str, vocab_size: int = 96, hidden_size: int = 32, num_layers: int = 2,
                context: int = 512) -> transformers.PretrainedConfig:
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=4,
                                       n_positions=context, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=context, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                  tie_word_embeddings=False)
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    raise ValueError(f"Unknown tiny architecture {arch!r}; choose from {ARCHITECTURES}.")


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float64, **config_overrides):
    """A randomly initialised ``arch`` causal LM, in eval mode, deterministic for a given seed.

    The default init (std 0.02) gives near-uniform next-token distributions; weights
    are scaled up so the model has clear preferences, like a trained one, and greedy
    argmax ties (which would make equality tests depend on rounding) do not occur.
    """
    return model_from_config(tiny_config(arch, **config_overrides), seed=seed, dtype=dtype)


def model_from_config(config: transformers.PretrainedConfig, seed: int = 0, dtype: torch.dtype = torch.float64):
    """A random causal LM for any transformers ``config``, weights scaled as in :func:`tiny_model`.

    Deterministic for a given seed; no EOS or BOS in its generation config.
    """
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3 if "emb" in name or "wte" in name or "wpe" in name else 0.15)
    # No EOS: decoders only stop where a test asks them to (pass eos_token_id explicitly).
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return model.eval()
