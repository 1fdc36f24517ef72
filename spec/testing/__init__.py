"""Helpers for testing decoders and proving stages correct: tiny models, oracle drafters,
deliberately broken stages, and equality checks. Shipped so users can test their own stages."""
