"""One drafter registry: every name round-trips through its class, every recipe builds, and the commands
offer exactly the registry's drafters."""

import pytest

from spec.apps.cli import build_parser, main
from spec.errors import ConfigurationError
from spec.registry import DRAFTERS, HeadOptions
from spec.testing.models import tiny_model


@pytest.mark.parametrize("name", sorted(DRAFTERS))
def test_every_entry_round_trips_through_its_class(name):
    entry = DRAFTERS[name]
    assert entry.name == entry.drafter.drafter_type == name
    assert entry.recipes and entry.shipped_recipe in entry.recipes


@pytest.mark.parametrize("name, recipe", [(n, r) for n in sorted(DRAFTERS) for r in DRAFTERS[n].recipes])
def test_every_recipe_builds_a_fresh_drafter_and_its_objective(name, recipe):
    model = tiny_model("llama", seed=0)
    drafter, objective = DRAFTERS[name].build(model, recipe, HeadOptions(num_heads=2, exit_layer=1))
    assert type(drafter) is DRAFTERS[name].drafter
    assert any(p.requires_grad for p in objective.trainable().parameters())


def _subcommand(parser, name):
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def test_every_drafter_choice_of_the_commands_comes_from_the_registry(capsys):
    train = {a.dest: a for a in _subcommand(build_parser(), "train")._actions}
    assert list(train["drafter"].choices) == sorted(DRAFTERS)
    assert set(train["recipe"].choices) == {r for entry in DRAFTERS.values() for r in entry.recipes}
    assert main(["build-model", "--heads", "no-such-drafter"]) == 2  # a name no entry has
    assert f"choose from {', '.join(sorted(DRAFTERS))}" in capsys.readouterr().err


def test_head_options_refuse_what_no_recipe_can_build():
    with pytest.raises(ConfigurationError, match="num_heads must be a whole number >= 1"):
        HeadOptions(num_heads=0)
    with pytest.raises(ConfigurationError, match=r"decay must be a number in \(0, 1\]"):
        HeadOptions(decay=0.0)
