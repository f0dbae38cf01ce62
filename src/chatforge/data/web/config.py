"""Configuration of the web-text pipeline: presets, and YAML files that enable, reorder or tune steps.

A YAML file looks like::

    preset: fineweb            # the starting point (fineweb, or fast: resiliparse extraction)
    keep_dropped: true         # write each step's dropped documents to removed/<step>/
    steps:                     # optional: the steps in order, each a name or {name: {param: value}}
      - url_filter
      - extract: {engine: resiliparse}
      - language: {languages: [en, fr], language_threshold: 0.65}
      - gopher_repetition
      - gopher_quality
      - c4
      - fineweb_quality
      - minhash: {n_grams: 5, num_buckets: 14, hashes_per_bucket: 8}
      - pii
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ...errors import InvalidValue

#: Every step the pipeline knows, with the parameters FineWeb used.
STEP_DEFAULTS: dict[str, dict] = {
    "url_filter": {},
    "extract": {"engine": "trafilatura", "timeout": 1.0},
    "language": {"languages": ["en"], "language_threshold": 0.65},
    "gopher_repetition": {},
    "gopher_quality": {},
    "c4": {"filter_no_terminal_punct": False},
    "fineweb_quality": {},
    "minhash": {"n_grams": 5, "num_buckets": 14, "hashes_per_bucket": 8},
    "pii": {},
}
FINEWEB_ORDER = list(STEP_DEFAULTS)
PRESETS: dict[str, list[tuple[str, dict]]] = {
    "fineweb": [(name, {}) for name in FINEWEB_ORDER],
    "fast": [(name, {"engine": "resiliparse"} if name == "extract" else {}) for name in FINEWEB_ORDER],
}


@dataclass
class WebPipelineConfig:
    """The steps to run, in order, each with its parameters (FineWeb's defaults overridden)."""

    steps: list[tuple[str, dict]] = field(default_factory=lambda: list(PRESETS["fineweb"]))
    keep_dropped: bool = True

    def __post_init__(self):
        seen = set()
        for name, params in self.steps:
            if name not in STEP_DEFAULTS:
                raise InvalidValue(f"unknown pipeline step {name!r}; known steps: {', '.join(STEP_DEFAULTS)}")
            if name in seen:
                raise InvalidValue(f"pipeline step {name!r} appears twice")
            seen.add(name)
            if not isinstance(params, dict):
                raise InvalidValue(f"parameters of step {name!r} must be a mapping, got {params!r}")

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> "WebPipelineConfig":
        if preset not in PRESETS:
            raise InvalidValue(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        return cls(steps=[(name, dict(params)) for name, params in PRESETS[preset]], **kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "WebPipelineConfig":
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise InvalidValue(f"{path}: expected a mapping at the top level")
        unknown = set(raw) - {"preset", "steps", "keep_dropped"}
        if unknown:
            raise InvalidValue(f"{path}: unknown keys {sorted(unknown)}")
        config = cls.from_preset(raw.get("preset", "fineweb"), keep_dropped=raw.get("keep_dropped", True))
        if "steps" in raw:
            try:
                config = cls(steps=[_parse_step(entry) for entry in raw["steps"]], keep_dropped=config.keep_dropped)
            except ValueError as error:
                raise InvalidValue(f"{path}: {error}") from error
        return config

    def params(self, name: str) -> dict:
        """The parameters of step ``name``: FineWeb's defaults updated with the configured ones."""
        configured = dict(self.steps)[name]
        return {**STEP_DEFAULTS[name], **configured}

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.steps]


def _parse_step(entry) -> tuple[str, dict]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        return name, dict(params or {})
    raise InvalidValue(f"a step must be a name or a one-key mapping, got {entry!r}")
