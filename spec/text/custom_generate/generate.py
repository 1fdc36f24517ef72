"""spec's decoding for ``model.generate(input_ids, custom_generate=spec.text.CUSTOM_GENERATE,
trust_remote_code=True, drafter=..., tree=..., max_new_tokens=...)``; transformers loads this file by path.
The logic lives in spec/text/hf.py (tested library code); this file only forwards to it."""

from spec.text.hf import generate as _spec_generate


def generate(model, *args, **kwargs):
    return _spec_generate(model, *args, **kwargs)
