"""``chatforge speedrun``: the whole pipeline, from web pages to an evaluated, exported assistant."""

from .recipe import RecipeError, SpeedrunRecipe, load_recipe
from .runner import speedrun
from .stages import STAGE_NAMES, StageError

__all__ = ["RecipeError", "STAGE_NAMES", "SpeedrunRecipe", "StageError", "load_recipe", "speedrun"]
