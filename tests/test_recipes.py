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


def test_an_unknown_recipe_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        recipes.main(["--recipes", "quickstart,fastest"])
    err = capsys.readouterr().err
    assert "--recipes names fastest; choose among quickstart" in err
