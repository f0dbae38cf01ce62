"""Training curves as PNG panels (matplotlib, headless)."""

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


def plot_panels(panels: Mapping[str, Mapping[str, tuple[Sequence, Sequence]]], path: str | Path, title: str,
                marks: Mapping[str, float] | None = None) -> Path:
    """One panel per entry of ``panels`` (panel title -> {line label: (steps, values)}), side by side;
    ``marks`` draws labelled vertical lines (label -> step) on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
