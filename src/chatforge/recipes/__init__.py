"""The shipped recipes (``<name>/speedrun.yaml`` and each stage's YAML), found whether chatforge runs from its
checkout (where ``recipes/<name>`` points here) or from an installed wheel."""

from importlib import resources
from pathlib import Path

#: Where the shipped recipes are.
SHIPPED = Path(str(resources.files(__name__)))


def recipe_file(path: str | Path) -> Path:
    """``path`` itself where it exists; otherwise the shipped recipe it names (``tiny/sft.yaml`` or
    ``recipes/tiny/sft.yaml``) where there is one; otherwise ``path`` (for the caller to report missing)."""
    given = Path(path)
    if given.exists():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("recipes",) else given.parts
    shipped = SHIPPED.joinpath(*parts) if parts else SHIPPED
    return shipped if shipped.is_file() else given


def shipped_names() -> list[str]:
    """The names ``chatforge speedrun --recipe`` takes."""
    return sorted(folder.name for folder in SHIPPED.iterdir() if (folder / "speedrun.yaml").is_file())


__all__ = ["SHIPPED", "recipe_file", "shipped_names"]
