"""A speedrun recipe: which stage recipes make up the pipeline, what the speedrun changes in them, and how
training stages are launched.

    recipes/<name>/speedrun.yaml

    run_root: runs/tiny            # where the stage recipes write; the speedrun moves it under --output
    launcher: [python]             # or [accelerate, launch, --config_file, accelerate_configs/multi_gpu.yaml]
    data: {skip_debian: false, preset: fineweb, vocab_size: 4096, val_fraction: 0.05}
    training:                      # the training stages it runs: each one's recipe YAML and overrides
      pretrain: {recipe: recipes/tiny/pretrain.yaml, overrides: {max_steps: 500}}
      ...
    eval: {prompts: 100, problems: 100, k: 8, ...}

A recipe that post-trains a pretrained model names it instead of pretraining one (no data stages then):

    base_model: {gguf: smollm2-135m-instruct}   # imported, given the tool protocol, as the SFT recipe's model
"""

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..errors import InvalidValue, NotFound
from ..eval.suite import EvalConfig
from ..recipes import recipe_file, shipped_names

TRAINING_STAGES = ("pretrain", "sft", "sft-probe", "reward", "ppo", "grpo")
#: What a training stage needs another one for (PPO scores with the reward model).
STAGE_NEEDS = {"ppo": "reward"}


class RecipeError(InvalidValue):
    """A speedrun recipe is malformed; the message names the file and field."""


@dataclass
class DataSettings:
    """The data stages: the sample corpus, its cleaning, the tokenizer and the token shards."""

    skip_debian: bool = False  # build the samples without the real HTML pages of Debian packages
    preset: str = "fineweb"  # web pipeline preset
    vocab_size: int = 4096
    max_number_digits: int = 3  # most digits per token (1: numbers split into single digits)
    val_fraction: float = 0.05  # documents held out for validation loss and tokenizer compression
    seed: int = 0
    # Statements about each frequent person of the fictional world in the embedded corpus (chatforge.tasks.world);
    # a short pretraining run stores their facts only when they are stated often enough.
    world_frequent_mentions: int = 48
    # More pretraining text beside the embedded corpus and the cleaned pages: files, folders or Hub datasets
    # (streamed), e.g. HuggingFaceFW/fineweb-edu; at most max_documents of them, the tokenizer trained on at
    # most tokenizer_max_chars characters. Their first documents holding pretraining_val_tokens tokens are
    # held out for validation (without it, val_fraction of their documents).
    pretraining_sources: list[str] = field(default_factory=list)
    max_documents: int | None = None
    pretraining_val_tokens: int | None = None
    tokenizer_max_chars: int | None = None
    tokenize_workers: int = 1

    def __post_init__(self):
        optional = ("pretraining_val_tokens",) if self.pretraining_val_tokens is not None else ()
        for name in ("vocab_size", "max_number_digits", "world_frequent_mentions", "tokenize_workers", *optional):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidValue(f"`data.{name}` must be a positive integer, got {value!r}")
        if not 0 < self.val_fraction < 1:
            raise InvalidValue(f"`data.val_fraction` must lie between 0 and 1, got {self.val_fraction!r}")


@dataclass
class BaseModel:
    """A pretrained model to post-train: imported from a GGUF file (a path, or a name that ``chatforge model
    import-gguf`` knows) and given ChatForge's tool protocol."""

    gguf: str


@dataclass
class StageRecipe:
    """A training stage: its recipe YAML and the values the speedrun sets in it."""

    recipe: Path
    overrides: dict = field(default_factory=dict)


@dataclass
class SpeedrunRecipe:
    path: Path
    run_root: str
    launcher: list[str]
    data: DataSettings
    training: dict[str, StageRecipe]
    eval: EvalConfig
    base_model: BaseModel | None = None

    @property
    def name(self) -> str:
        return self.path.parent.name


def _section(raw: dict, key: str, cls, path: Path):
    values = raw.get(key) or {}
    known = {f.name for f in fields(cls)}
    if not isinstance(values, dict) or set(values) - known:
        raise RecipeError(f"{path}: `{key}` takes the fields {sorted(known)}; got {values!r}")
    try:
        return cls(**values)
    except ValueError as error:
        raise RecipeError(f"{path}: {error}") from error


def load_recipe(recipe: str) -> SpeedrunRecipe:
    """A shipped recipe's name (``tiny`` reads ``recipes/tiny/speedrun.yaml``) or the path of a speedrun YAML."""
    path = Path(recipe) if Path(recipe).suffix in (".yaml", ".yml") else recipe_file(f"{recipe}/speedrun.yaml")
    if not path.is_file():
        raise NotFound(f"{path}: no such speedrun recipe (give one of {', '.join(shipped_names())} or the path "
                       "of a speedrun YAML)")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"run_root", "launcher", "data", "training", "eval", "base_model"}
    if unknown:
        raise RecipeError(f"{path}: unknown fields {sorted(unknown)}")
    if not isinstance(raw.get("run_root"), str):
        raise RecipeError(f"{path}: `run_root` must name the folder the stage recipes write to")
    launcher = raw.get("launcher", ["python"])
    if not (isinstance(launcher, list) and launcher and all(isinstance(part, str) for part in launcher)):
        raise RecipeError(f"{path}: `launcher` must be a non-empty list of strings, got {launcher!r}")
    # an Accelerate config named as shipped (accelerate_configs/multi_gpu.yaml) is found outside the checkout too
    launcher = [str(recipe_file(part)) if option == "--config_file" else part
                for option, part in zip([None, *launcher], launcher)]
    training_raw = raw.get("training") or {}
    base_model = _section(raw, "base_model", BaseModel, path) if "base_model" in raw else None
    if unknown := sorted(set(training_raw) - set(TRAINING_STAGES)):
        raise RecipeError(f"{path}: unknown training stages {unknown}; they are {list(TRAINING_STAGES)}")
    if "sft" not in training_raw:
        raise RecipeError(f"{path}: `training` needs an sft stage")
    if (base_model is None) == ("pretrain" not in training_raw):
        raise RecipeError(f"{path}: give either `training.pretrain` (a model pretrained from the data) or "
                          "`base_model` (a pretrained model to import), not both or neither")
    for stage, needed in STAGE_NEEDS.items():
        if stage in training_raw and needed not in training_raw:
            raise RecipeError(f"{path}: training.{stage} needs training.{needed}")
    training = {}
    for stage, entry in training_raw.items():
        if not isinstance(entry, dict) or "recipe" not in entry or set(entry) - {"recipe", "overrides"}:
            raise RecipeError(f"{path}: training.{stage} needs `recipe` (a YAML path) and optional `overrides`")
        stage_recipe = recipe_file(entry["recipe"])
        if not stage_recipe.is_file():
            raise RecipeError(f"{path}: training.{stage}.recipe={entry['recipe']}: no such file")
        training[stage] = StageRecipe(stage_recipe, dict(entry.get("overrides") or {}))
    return SpeedrunRecipe(path=path, run_root=raw["run_root"].rstrip("/"), launcher=launcher,
                          data=_section(raw, "data", DataSettings, path), training=training,
                          eval=_section(raw, "eval", EvalConfig, path), base_model=base_model)


def rebase(value, run_root: str, output: Path):
    """``value`` with every path under ``run_root`` moved under ``output`` (in nested lists and dicts too)."""
    if isinstance(value, str) and (value == run_root or value.startswith(run_root + "/")):
        return str(output / value[len(run_root):].lstrip("/"))
    if isinstance(value, list):
        return [rebase(item, run_root, output) for item in value]
    if isinstance(value, dict):
        return {key: rebase(item, run_root, output) for key, item in value.items()}
    return value


def resolve_stage_config(recipe: SpeedrunRecipe, stage: str, output: Path) -> dict:
    """The stage's recipe as the speedrun runs it: rebased onto ``output``, with the overrides, resuming from the
    newest checkpoint when one is there."""
    entry = recipe.training[stage]
    config = rebase(yaml.safe_load(entry.recipe.read_text()) or {}, recipe.run_root, output)
    config.update(rebase(entry.overrides, recipe.run_root, output))
    config["resume_from_checkpoint"] = "latest"
    return config
