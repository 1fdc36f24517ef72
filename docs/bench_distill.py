"""Self-distillation speed on the shipped model: the cached, batched generator against the full recompute
it replaced (the whole sequence through the model again for every new token), in one run.

    python docs/bench_distill.py --prompts 16 --new-tokens 256 --out docs/bench/distill.json

Both draw with the same seeded generator from the same probabilities (float32 model, float64 sampling), so
they write the same kind of text; the table gives seconds, tokens per second and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from spec.apps.shipped import load_shipped
from spec.protocols import SamplingParams
from spec.sampling import processed_logits
from spec.training.distill import continue_batch


@torch.no_grad()
def full_recompute(model, prompts: torch.Tensor, new_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """The implementation before: no cache, the whole sequence again per token."""
    seq = prompts.clone()
    for _ in range(new_tokens):
        logits = model(input_ids=seq).logits[:, -1].double()
        probs = processed_logits(logits, SamplingParams(temperature=1.0)).softmax(-1)
        seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts in the batch")
    parser.add_argument("--prompt-tokens", type=int, default=15)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a machine running other jobs: "
                        "spinning intra-op threads then cost more than they give)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_shipped()
    vocab = model.config.vocab_size
    prompts = torch.randint(0, vocab, (args.prompts, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    rows = {}
    for name, run in (("full recompute (before)", lambda g: full_recompute(model, prompts, args.new_tokens, g)),
                      ("KV cache, batched (now)",
                       lambda g: continue_batch(model, prompts, args.new_tokens, SamplingParams(temperature=1.0), g))):
        start = time.perf_counter()
        out = run(torch.Generator().manual_seed(1))
        seconds = time.perf_counter() - start
        assert out.shape == (args.prompts, args.prompt_tokens + args.new_tokens)
        rows[name] = {"seconds": seconds, "tokens_per_second": args.prompts * args.new_tokens / seconds}
    before, now = rows.values()
    print(f"{args.prompts} prompts x {args.new_tokens} new tokens, shipped model, {torch.get_num_threads()} threads\n")
    print("| generator | seconds | tokens/s |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['seconds']:.2f} | {row['tokens_per_second']:.0f} |")
    ratio = now["tokens_per_second"] / before["tokens_per_second"]
    print(f"\nspeedup: {ratio:.1f}x")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"settings": vars(args), "rows": rows, "speedup": ratio}, handle, indent=2)


if __name__ == "__main__":
    main()
