"""Training curves and scores with their intervals as PNG figures (matplotlib, headless)."""

from collections.abc import Mapping, Sequence
from pathlib import Path


def history_series(log_history: Sequence[Mapping], keys: Mapping[str, str]) -> dict[str, tuple[list, list]]:
    """``{label: (steps, values)}`` of the logged ``keys`` (label -> log key) in a Trainer's ``log_history``."""
    series = {}
    for label, key in keys.items():
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        if points:
            series[label] = ([s for s, _ in points], [v for _, v in points])
    return series


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_panels(panels: Mapping[str, Mapping[str, tuple[Sequence, Sequence]]], path: str | Path, title: str,
                marks: Mapping[str, float] | None = None) -> Path:
    """One panel per entry of ``panels`` (panel title -> {line label: (steps, values)}), side by side;
    ``marks`` draws labelled vertical lines (label -> step) on every panel."""
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axis, (name, lines) in zip(axes[0], panels.items()):
        for label, (steps, values) in lines.items():
            axis.plot(steps, values, label=label)
        for (label, step), style in zip((marks or {}).items(), ("--", ":", "-.")):
            axis.axvline(step, color="grey", linestyle=style, linewidth=1, label=label)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if len(lines) > 1 or marks:
            axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_scores(groups: Mapping[str, Mapping[str, tuple[float, float, float]]], path: str | Path, title: str) -> Path:
    """Grouped bars (group -> {bar label: (score, low, high)}), each with its interval as an error bar."""
    labels = list(dict.fromkeys(label for bars in groups.values() for label in bars))
    width = 0.8 / max(1, len(labels))
    fig, axis = _pyplot().subplots(figsize=(max(5.0, 1.6 * len(groups) + 1.5), 3.6))
    for offset, label in enumerate(labels):
        places = [i + (offset - (len(labels) - 1) / 2) * width for i, bars in enumerate(groups.values())
                  if label in bars]
        scores = [bars[label] for bars in groups.values() if label in bars]
        axis.bar(places, [s for s, _, _ in scores], width, label=label,
                 yerr=[[s - low for s, low, _ in scores], [high - s for s, _, high in scores]], capsize=3)
    axis.set_xticks(range(len(groups)), list(groups), fontsize=8)
    axis.set_ylim(0, 1)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
