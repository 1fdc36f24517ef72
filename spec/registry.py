"""Every trainable drafter by name: its class, the recipes that train a fresh one, and how the shipped heads
were trained.

Keyed by each class's ``drafter_type`` (the name its checkpoints record). The shipped model's loader and
build and ``spec train`` read this table and nothing else, so a new drafter is its own file plus one entry
in ``DRAFTERS``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import attrs

from spec.drafters import CloverDrafter, HydraDrafter, KangarooDrafter, MedusaDrafter
from spec.drafters.draft_vocab import DraftVocabulary
from spec.drafters.eagle import EagleDrafter
from spec.drafters.eagle3 import Eagle3Drafter
from spec.errors import ConfigurationError
from spec.io.files import is_int, is_real
from spec.training import Medusa2Objective, MedusaObjective
from spec.training.clover import CloverObjective
from spec.training.eagle import Eagle3Objective, EagleObjective
from spec.training.hydra import HydraObjective
from spec.training.kangaroo import KangarooObjective


def _whole(low: int):
    def check(instance, attribute, value):
        if not is_int(value) or value < low:
            raise ConfigurationError(f"{type(instance).__name__}.{attribute.name} must be a whole number >= {low}, "
                                     f"got {value!r}.")

    return check


def _fraction(low_open: bool):
    def check(instance, attribute, value):
        if not is_real(value) or math.isnan(value) or not (0 < value <= 1 if low_open else 0 <= value <= 1):
            raise ConfigurationError(f"{type(instance).__name__}.{attribute.name} must be a number in "
                                     f"{'(0' if low_open else '[0'}, 1], got {value!r}.")

    return check


def _seed(instance, attribute, value):
    if value is not None and (not is_int(value) or not 0 <= value < 2**64):
        raise ConfigurationError(f"HeadOptions.seed must be None or a whole number in [0, 2**64), got {value!r}.")


@attrs.frozen
class HeadOptions:
    """What a recipe builds a fresh drafter and its objective with: ``spec train``'s options."""

    num_heads: int = attrs.field(default=4, validator=_whole(1))  # Kangaroo: how deep it drafts
    num_layers: int = attrs.field(default=1, validator=_whole(0))  # blocks per head
    exit_layer: int = attrs.field(default=2, validator=_whole(1))  # Kangaroo: shallow layers the adapter reads
    threshold: float = attrs.field(default=0.6, validator=_fraction(low_open=False))  # Kangaroo: early exit
    decay: float = attrs.field(default=0.8, validator=_fraction(low_open=True))  # head k's loss weight is decay**k
    seed: Optional[int] = attrs.field(default=0, validator=_seed)


def _callable(instance, attribute, value):
    if not callable(value):
        raise ConfigurationError(f"Recipe.{attribute.name} must be a function, got {value!r}.")


@attrs.frozen
class Recipe:
    """How one paper (or variant) trains a drafter: a fresh drafter for a model, and the objective."""

    fresh: Callable[[Any, HeadOptions], Any] = attrs.field(validator=_callable)  # (model, options) -> a new drafter
    # (model, drafter, options) -> the Objective that trains it
    objective: Callable[[Any, Any, HeadOptions], Any] = attrs.field(validator=_callable)
    summary: str = ""  # one line for `spec train --help`
    # Trains on the model's own continuations of the data (as prompts), not on the data itself.
    own_text: bool = False
    # The backbone is trained too, so it is saved next to the heads.
    trains_model: bool = False
    # Blocks per head `spec train` always uses (Hydra++: 4, as in its paper); None: --num-layers.
    num_layers: Optional[int] = None
    # The fewest blocks per head that work, and why (shown when --num-layers asks for fewer).
    min_num_layers: int = 0
    min_num_layers_why: str = ""
    # (drafter, train_blocks [N, T + 1]) -> None: what a fresh drafter learns from the training data before
    # training starts (EAGLE-3: its draft vocabulary, by token frequency). None: nothing.
    prepare: Optional[Callable[[Any, Any], None]] = None


def _named_class(instance, attribute, value):
    if not isinstance(value, type) or not isinstance(getattr(value, "drafter_type", None), str):
        raise ConfigurationError(f"DrafterEntry.drafter must be a drafter class with a drafter_type name (the name "
                                 f"its checkpoints record), got {value!r}; give the class one.")


def _recipes(instance, attribute, value):
    if not isinstance(value, dict) or not value or not all(isinstance(r, Recipe) for r in value.values()):
        raise ConfigurationError(f"{instance.drafter.drafter_type}: recipes must be a non-empty dict of name -> "
                                 f"Recipe, got {value!r}.")


@attrs.frozen
class DrafterEntry:
    drafter: type = attrs.field(validator=_named_class)  # its drafter_type names the entry
    recipes: dict[str, Recipe] = attrs.field(validator=_recipes)  # `spec train --recipe`; the first is the default
    # How the shipped heads were trained (on the shipped model's corpus): a recipe and its options.
    shipped_recipe: str = attrs.field()
    shipped_options: HeadOptions
    # Drafts from the model's first layers, so `spec train` checks --exit-layer against the model's depth.
    reads_exit_layer: bool = False

    @shipped_recipe.validator
    def _known(self, attribute, value):
        if value not in self.recipes:
            raise ConfigurationError(f"{self.name}: shipped_recipe {value!r} is not one of its recipes "
                                     f"{list(self.recipes)}; name one of them.")

    @property
    def name(self) -> str:
        return self.drafter.drafter_type

    def build(self, model, recipe: str, options: HeadOptions):
        """``(drafter, objective)``: a fresh drafter for ``model`` and the objective ``recipe`` trains it with."""
        if recipe not in self.recipes:
            raise ConfigurationError(f"{self.name} has no recipe {recipe!r}; choose from {', '.join(self.recipes)}.")
        chosen = self.recipes[recipe]
        drafter = chosen.fresh(model, options)
        return drafter, chosen.objective(model, drafter, options)


def _medusa(model, o: HeadOptions):
    return MedusaDrafter.from_model(model, num_heads=o.num_heads, num_layers=o.num_layers, seed=o.seed)


def _hydra(prefix_layer: bool):
    def fresh(model, o: HeadOptions):
        return HydraDrafter.from_model(model, num_heads=o.num_heads, num_layers=o.num_layers,
                                       prefix_layer=prefix_layer, seed=o.seed)

    return fresh


def _eagle3_vocabulary(drafter, train_blocks) -> None:
    """EAGLE-3's draft vocabulary: the quarter of the target's tokens most frequent in the training data (the
    paper keeps 32k of Llama-3's 128k), the head restarted from the target's lm_head rows for them."""
    from spec.models import lm_head

    vocab = drafter.heads.vocab
    chosen = DraftVocabulary.from_corpus(train_blocks, vocab, max(vocab // 4, 1))
    drafter.heads.set_vocabulary(chosen, lm_head(drafter.model))
    drafter.draft_vocab = DraftVocabulary.from_maps(drafter.heads.d2t, drafter.heads.t2d)


def _eagle3(model, o: HeadOptions):
    # Every token until `prepare` chooses the draft vocabulary from the training data (a caller that does not
    # call it trains a valid, unreduced head).
    return Eagle3Drafter.from_model(model, max_depth=o.num_heads, seed=o.seed)


_ENTRIES = (
    DrafterEntry(
        MedusaDrafter,
        {"medusa1": Recipe(_medusa, lambda m, d, o: MedusaObjective(m, d.heads, decay=o.decay),
                           summary="backbone frozen, hard targets"),
         "medusa2": Recipe(_medusa, lambda m, d, o: Medusa2Objective(m.train(), d.heads, decay=o.decay),
                           summary="backbone trained jointly (LM loss + head losses, heads warmed up first)",
                           trains_model=True),
         "self-distill": Recipe(_medusa, lambda m, d, o: MedusaObjective(m, d.heads, decay=o.decay, soft_targets=True),
                                summary="heads match the model's own distribution on text the model generates "
                                "from --data prompts", own_text=True)},
        # Soft targets on the corpus: the heads learn the model's own distribution, which is what they must guess.
        shipped_recipe="self-distill", shipped_options=HeadOptions(num_heads=4, num_layers=1, seed=0)),
    DrafterEntry(
        HydraDrafter,
        {"hydra": Recipe(_hydra(prefix_layer=False), lambda m, d, o: HydraObjective(m, d, teacher=False),
                         summary="Hydra heads on the data", min_num_layers=1,
                         min_num_layers_why="Hydra's first block reads the token embeddings"),
         "hydra++": Recipe(_hydra(prefix_layer=True), lambda m, d, o: HydraObjective(m, d, teacher=True),
                           summary="prefix layer, 4-block heads, teacher loss against the model's distribution",
                           num_layers=4)},
        shipped_recipe="hydra++", shipped_options=HeadOptions(num_heads=4, num_layers=2, seed=0)),
    DrafterEntry(
        CloverDrafter,
        {"clover": Recipe(lambda m, o: CloverDrafter.from_model(m, num_heads=o.num_heads, num_layers=o.num_layers,
                                                                seed=o.seed),
                          lambda m, d, o: CloverObjective(m, d, decay=o.decay),
                          summary="augmenting block + attention decoder, soft cross-entropy to the model's "
                          "distribution")},
        shipped_recipe="clover", shipped_options=HeadOptions(num_heads=4, num_layers=1, seed=0)),
    DrafterEntry(
        KangarooDrafter,
        {"kangaroo": Recipe(lambda m, o: KangarooDrafter.from_model(m, exit_layer=o.exit_layer, threshold=o.threshold,
                                                                    max_depth=o.num_heads, seed=o.seed),
                            lambda m, d, o: KangarooObjective(m, d),
                            summary="the adapter after --exit-layer shallow layers matches the full model's "
                            "distribution")},
        shipped_recipe="kangaroo", shipped_options=HeadOptions(num_heads=4, exit_layer=2, threshold=0.3, seed=0),
        reads_exit_layer=True),
    DrafterEntry(
        EagleDrafter,
        {"eagle": Recipe(lambda m, o: EagleDrafter.from_model(m, max_depth=o.num_heads, seed=o.seed),
                         lambda m, d, o: EagleObjective(m, d),
                         summary="one decoder layer over (token, feature) pairs: SmoothL1 feature regression + "
                         "0.1 x cross-entropy to the model's distribution, noisy input features")},
        shipped_recipe="eagle", shipped_options=HeadOptions(num_heads=4, seed=0)),
    DrafterEntry(
        Eagle3Drafter,
        {"eagle3": Recipe(_eagle3, lambda m, d, o: Eagle3Objective(m, d, decay=o.decay),
                          summary="fused low/middle/high features, training-time test (unrolled on its own "
                          "predictions), cross-entropy on a frequency-chosen draft vocabulary (a quarter of the "
                          "tokens)", prepare=_eagle3_vocabulary)},
        shipped_recipe="eagle3", shipped_options=HeadOptions(num_heads=4, seed=0)),
)

#: drafter_type -> entry.
DRAFTERS: dict[str, DrafterEntry] = {entry.name: entry for entry in _ENTRIES}

