"""``spec generate``: text in, text streamed out as the speculative decoder accepts it; ``--chat`` for a session."""

from __future__ import annotations

import argparse
import sys

from spec.apps.options import add_runtime_arguments

#: The shipped drafter with the best measured speed on the shipped model (docs/benchmarks.md: Clover,
#: 2.84 tokens per step, the fastest pipeline on the CPU).
BEST_SHIPPED_DRAFTER = "clover"


def add_parser(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="generate text from a prompt (argument or stdin), streamed as it is accepted; --chat for a session",
        description="Continue one prompt, given as an argument or on stdin, and stream the text to the terminal "
        "as the speculative decoder accepts it (several tokens per step), then print a one-line footer: tokens, "
        "seconds, tokens/s and the mean accepted length (tokens per verify step, accepted drafts + 1, as "
        "Spec-Bench and EAGLE report it; no speedup is claimed without a baseline, see `spec demo` or "
        "`spec bench`). --chat runs a multi-turn session through the tokenizer's chat template. Defaults to the "
        "shipped model and its fastest drafter; under greedy decoding the text is exactly the model's own "
        "(transformers generate's).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("prompt", nargs="?", default=None,
                     help="the text to continue; omit it (or give -) to read the prompt from stdin")
    gen.add_argument("--prompt", dest="prompt_option", default=None, metavar="TEXT",
                     help="the text to continue, as `spec demo --prompt` takes it (same as the positional argument)")
    gen.add_argument("--prompt-index", type=int, default=None,
                     help="continue a held-out snippet of the shipped model instead (0 to the number shipped - 1)")
    gen.add_argument("--chat", action="store_true",
                     help="interactive session: each stdin line is a user turn, answered through the chat template "
                     "(the model needs one); an empty line or end of input ends it")
    gen.add_argument("--system", default=None, help="with --chat: a system message opening the conversation")
    gen.add_argument("--model", default=None, help="a transformers model directory (local; with its tokenizer); "
                     "default: the shipped model")
    gen.add_argument("--drafter", default=None,
                     help="heads under the model's heads/ by name (shipped: clover, hydra, medusa, kangaroo), a heads "
                     f"directory, or 'none' for autoregressive decoding; default: {BEST_SHIPPED_DRAFTER} for the "
                     "shipped model, none for --model")
    gen.add_argument("--tree", default=None, help="a tree JSON file or Medusa choices list (JSON text); default: the "
                     "tree saved with the drafter, else a chain as deep as it drafts")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (per turn with --chat)")
    gen.add_argument("--stop", action="append", default=None, metavar="TEXT",
                     help="stop after this text appears (matched on decoded text across tokens; repeatable)")
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="0 = greedy (the model's own text); > 0 samples losslessly with rejection sampling")
    gen.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens only")
    gen.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of tokens whose "
                     "probability reaches p")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument("--no-stream", action="store_true", help="print the text once generation ends")
    add_runtime_arguments(gen)
    gen.set_defaults(func=run)


def check_arguments(args: argparse.Namespace) -> None:
    """Every option before any model is loaded; fills ``args.text`` (None with --chat). Raises OptionError & co."""
    from spec.apps.demo import _tree_argument
    from spec.apps.options import check_int, check_real, check_seed, check_temperature, check_verifier_kinds
    from spec.apps.shipped import heldout_prompts, shipped_drafters, shipped_names
    from spec.errors import CheckpointError, OptionError
    from spec.io import check_model_directory
    from spec.models.placement import resolve_placement

    if args.prompt_option is not None:
        if args.prompt is not None:
            raise OptionError("The prompt is given twice (as an argument and with --prompt); give it once.")
        args.prompt = args.prompt_option
    check_int(args.max_new_tokens, "--max-new-tokens", 1)
    check_seed(args.seed)
    resolve_placement(args.device, args.dtype)
    check_temperature(args.temperature, args.device, args.dtype)
    if args.top_k is not None:
        check_int(args.top_k, "--top-k", 1)
    check_real(args.top_p, "--top-p", 0.0, 1.0, low_open=True)
    if args.temperature == 0 and (args.top_k is not None or args.top_p != 1.0):
        raise OptionError("--top-k and --top-p shape sampling; with --temperature 0 (greedy) they do nothing. Drop "
                          "them or give a temperature > 0.")
    check_verifier_kinds(args.verifier, "--verifier", several=False)
    for text in args.stop or []:
        if not text:
            raise OptionError("--stop is empty; give the text to stop at.")
    if args.system is not None and not args.chat:
        raise OptionError("--system opens a chat; add --chat, or put the text in the prompt.")
    if args.chat and (args.prompt is not None or args.prompt_index is not None):
        raise OptionError("--chat reads each turn from stdin; drop the prompt and --prompt-index.")
    if args.prompt is not None and args.prompt_index is not None:
        raise OptionError("The prompt and --prompt-index both choose the text to continue; give one of them.")
    if args.model is None:
        if not shipped_names():
            raise CheckpointError("No shipped model is installed; give --model DIR, or build it with "
                                  "`spec build-model --export --heads clover`.")
        args.drafter = args.drafter or BEST_SHIPPED_DRAFTER
        if args.drafter != "none" and args.drafter not in shipped_drafters():
            raise OptionError(f"--drafter {args.drafter!r} has no shipped heads; choose from "
                              f"{', '.join(shipped_drafters())} or none.")
    else:
        check_model_directory(args.model, "--model directory", need_tokenizer=True)
        args.drafter = args.drafter or "none"
        if args.prompt_index is not None:
            raise OptionError("--prompt-index picks a held-out snippet of the shipped model; with --model give the "
                              "prompt itself.")
    if args.drafter == "none" and args.tree is not None:
        raise OptionError("--tree shapes the drafter's candidates; with --drafter none there are none. Drop --tree.")
    args.tree_value = _tree_argument(args.tree) if args.tree else None
    args.text = None
    if args.prompt_index is not None:
        prompts = heldout_prompts()
        check_int(args.prompt_index, "--prompt-index", 0, len(prompts) - 1,
                  hint=f" ({len(prompts)} held-out snippets are shipped)")
        args.text = prompts[args.prompt_index]
    elif not args.chat:
        if args.prompt in (None, "-") and sys.stdin.isatty():
            print("Reading the prompt from stdin; end it with Ctrl-D.", file=sys.stderr)
        args.text = sys.stdin.read() if args.prompt in (None, "-") else args.prompt
        if not args.text.strip():
            raise OptionError("The prompt is empty; give the text to continue as an argument or on stdin.")


def load_generator(args: argparse.Namespace):
    """The ``TextGenerator`` the options describe (verifier spelled as in ``spec demo``: ``fast+compile``...)."""
    from spec.apps.shipped import shipped_path
    from spec.text import TextGenerator

    kind, compile = args.verifier, args.compile
    if kind.endswith("+compile"):
        kind, compile = kind.removesuffix("+compile"), "on"
    return TextGenerator.from_pretrained(args.model or shipped_path(), device=args.device, dtype=args.dtype,
                                         drafter=None if args.drafter == "none" else args.drafter,
                                         tree=args.tree_value, verifier=kind,
                                         compile={"auto": None, "on": True, "off": False}[compile],
                                         draft_weights=args.draft_weights)


class _Echo:
    """A streamer printing each piece as soon as it decodes to whole characters (``TextStreamer`` without
    the wait for a space, so accepted tokens show up at once), and keeping the pieces."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out = tokenizer, out
        self.ids: list[int] = []
        self.printed = ""
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the prompt comes first; the terminal already shows it
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next bytes
            return
        self._emit(text)

    def _emit(self, text: str) -> None:
        piece = text[len(self.printed):]
        self.printed = text
        self.out.write(piece)
        self.out.flush()

    def end(self) -> None:
        self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True))


def footer(result) -> str:
    """One line: tokens, seconds, tokens/s, mean accepted length (defined beside it), why it stopped."""
    return (f"[{len(result.token_ids)} tokens in {result.total_s:.2f} s, {result.tokens_per_second:.1f} tokens/s; "
            f"mean accepted length {result.mean_accepted_length:.2f} tokens per verify step (accepted drafts + 1, "
            f"averaged over {len(result.steps)} steps); stopped: {result.finish_reason}]")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the terminal shows the generated text, not loading bars
    generator = load_generator(args)
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed, stop_strings=args.stop)
    if not args.chat:
        _turn(generator, args.text, settings, args.no_stream)
        return 0
    messages = [{"role": "system", "content": args.system}] if args.system is not None else []
    from spec.text.tokens import encode_prompt

    encode_prompt(generator.tokenizer, messages or [{"role": "user", "content": "hi"}])  # no template: refuse now
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        result = _turn(generator, messages, settings, args.no_stream)
        messages.append({"role": "assistant", "content": result.text})


def _turn(generator, prompt, settings, no_stream: bool):
    streamer = None if no_stream else _Echo(generator.tokenizer, sys.stdout)
    result = generator.generate(prompt, streamer=streamer, **settings)
    if no_stream:
        sys.stdout.write(result.text)
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(footer(result), file=sys.stderr, flush=True)
    return result
