"""Print the drafter parameter-count table in docs/drafters.md.

    python docs/drafter_parameter_counts.py

Builds the drafters for a Llama-2-7B-shaped model on PyTorch's meta device (shapes
only, no memory, no download) and counts each drafter's own trainable parameters
(``num_parameters``; the frozen model parts they read are not counted).
"""

from __future__ import annotations

import torch
import transformers

from spec import CloverDrafter, HydraDrafter, MedusaDrafter

# Llama-2-7B / Vicuna-7B v1.5 shapes.
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, tie_word_embeddings=False)

DRAFTERS = [
    ("Medusa (4 heads, 1 ResBlock each)", lambda m: MedusaDrafter.from_model(m, num_heads=4, num_layers=1)),
    ("Hydra (4 heads, 1 block each)", lambda m: HydraDrafter.from_model(m, num_heads=4, num_layers=1)),
    ("Hydra++ (4 heads, 4 blocks each, prefix layer)", lambda m: HydraDrafter.hydra_plus_plus(m, num_heads=4)),
    ("Clover (4 heads, 1 ResBlock each, augmenting block)", lambda m: CloverDrafter.from_model(m, num_heads=4)),
]


def table(config_kwargs: dict) -> str:
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config_kwargs))
        base = sum(p.numel() for p in model.parameters())
        rows = ["| drafter | parameters | % of the base model |", "|---|---:|---:|"]
        for name, build in DRAFTERS:
            count = build(model).num_parameters
            rows.append(f"| {name} | {count / 1e6:,.1f} M | {100 * count / base:.1f} % |")
    rows.append(f"| *base model* | *{base / 1e6:,.1f} M* | *100 %* |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(LLAMA_7B))
