"""Drafters: propose a candidate token for every node of a tree."""

from spec.drafters.medusa import MedusaDrafter, MedusaHeads, ResBlock

__all__ = ["MedusaDrafter", "MedusaHeads", "ResBlock"]
