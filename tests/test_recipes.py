"""``python -m tuneforge.bench.recipes``: every recipe it compares is flags ``tuneforge sft`` takes."""

import pytest
from click.testing import CliRunner

from tuneforge.bench import recipes
from tuneforge.quickstart import RECIPE


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_each_recipe_is_flags_that_sft_accepts(name):
    from tuneforge.cli import cli

    settings, steps = recipes.RECIPES[name]
    recipe = recipes.recipe_settings(settings)
    assert recipe == {**RECIPE, **settings} or recipe["train_type"] == "full"
    args = ["sft", "--model", "smollm2-135m-instruct", *recipes.flags(recipe), "--max-steps", str(steps), "--help"]
    # --help after the flags: click parses every flag (an unknown or mistyped one, or one of a tuner the
    # recipe does not select, fails) and stops before training
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert recipes.flags({"packing": False, "max_length": 2048, "target_modules": ["all-linear"]}) == [
        "--no-packing", "--max-length", "2048", "--target-modules", "all-linear"]
    # a list option's flag is repeated, once per item (the long recipe's two datasets)
    assert recipes.flags({"dataset": ["meeting-minutes", "meeting-minutes:train-long"]}) == [
        "--dataset", "meeting-minutes", "--dataset", "meeting-minutes:train-long"]


def test_the_long_recipe_trains_on_both_training_splits_at_the_models_context(smollm2_tokenizer):
    from tuneforge import options
    from tuneforge.config import SFTConfig
    from tuneforge.datasets import meeting_minutes

    settings, steps = recipes.RECIPES["long-steps160"]
    config = options.build(SFTConfig, recipes.recipe_settings(settings))
    assert config.dataset == ["meeting-minutes", "meeting-minutes:train-long"] and config.max_length == 8192
    # the answers of the long split have room for its longest minutes
    longest = max(len(smollm2_tokenizer(row["messages"][1]["content"]).input_ids) for row in meeting_minutes.load("long"))
    assert longest < recipes.MAX_NEW_TOKENS_OF["long"], longest


def test_an_unknown_recipe_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        recipes.main(["--recipes", "quickstart,fastest"])
    err = capsys.readouterr().err
    assert "--recipes names fastest; choose among quickstart" in err
