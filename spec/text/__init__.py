"""Text in, text out: a decoder with its tokenizer, chat templates, stop strings, streaming, and
``model.generate(custom_generate=...)`` (see docs/text.md)."""

from spec.text.generator import TextGenerator, TextOutput
from spec.text.hf import CUSTOM_GENERATE
from spec.text.tokens import StopStrings, check_tokenizer, encode_prompt

__all__ = ["CUSTOM_GENERATE", "StopStrings", "TextGenerator", "TextOutput", "check_tokenizer", "encode_prompt"]
