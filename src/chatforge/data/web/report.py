"""The funnel of a pipeline run: ``stats.json``, ``report.md`` and ``funnel.png``."""

import json
from pathlib import Path

from .config import WebPipelineConfig


def _load_stage(output_dir: Path, stage: str) -> list[dict]:
    """The stage's statistics summed over all its tasks' files (a resumed run only reruns some tasks,
    and datatrove's own ``stats.json`` covers the tasks of the last invocation)."""
    from datatrove.utils.stats import PipelineStats

    total = PipelineStats()
    for path in sorted((output_dir / "logs" / stage / "stats").glob("*.json")):
        total = total + PipelineStats.from_json(json.loads(path.read_text(encoding="utf-8")))
    return [stat.to_dict() for stat in total.stats]


def _total(value) -> float:
    return value.get("total", 0) if isinstance(value, dict) else (value or 0)


def _step_entry(name: str, block: dict, documents_in: float) -> dict:
    stats = block.get("stats", {})
    # Filters count "forwarded" (absent when they kept nothing); formatters only count "total".
    is_filter = "forwarded" in stats or "dropped" in stats
    kept = stats.get("forwarded", 0) if is_filter else stats.get("total", 0)
    reasons = {key.removeprefix("dropped_"): _total(value) for key, value in stats.items()
               if key.startswith("dropped_")}
    return {
        "step": name,
        "documents": int(_total(kept)),
        "characters": int(_total(stats.get("doc_len"))),
        "dropped": int(documents_in - _total(kept)),
        "drop_reasons": dict(sorted(reasons.items(), key=lambda item: -item[1])),
        "seconds": round(_total(block.get("time_stats")), 3),
    }


def collect_stats(output_dir: str | Path, stages: list[str], config: WebPipelineConfig) -> dict:
    """Documents and characters after each step, drop reasons, and unreadable inputs."""
    output_dir = Path(output_dir)
    names = config.names
    split = names.index("minhash") if "minhash" in names else len(names)
    filter_blocks = _load_stage(output_dir, "filter")
    reader = filter_blocks[0].get("stats", {}) if filter_blocks else {}
    documents = _total(reader.get("documents"))
    funnel = [{"step": "input", "documents": int(documents), "characters": int(_total(reader.get("doc_len"))),
               "dropped": 0, "drop_reasons": {}, "seconds": 0.0}]
    blocks = list(zip(names[:split], filter_blocks[1:1 + split]))
    if "dedup" in stages:
        dedup_blocks = _load_stage(output_dir, "dedup")
        blocks += list(zip(names[split:], dedup_blocks[1:1 + len(names) - split]))
    for name, block in blocks:
        entry = _step_entry(name, block, documents)
        funnel.append(entry)
        documents = entry["documents"]
    errors = []
    for path in sorted((output_dir / "logs" / "input_errors").glob("*.jsonl")):
        errors.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return {
        "input_files": int(_total(reader.get("input_files"))),
        "input_errors": len(errors),
        "funnel": funnel,
        "errors": errors,
        "output": {"documents": funnel[-1]["documents"], "characters": funnel[-1]["characters"],
                   "folder": str(output_dir / "data")},
    }


def plot_funnel(stats: dict, path: str | Path) -> None:
    """Bars of documents and characters kept after each step, as a share of the input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    funnel = stats["funnel"]
    steps = [entry["step"] for entry in funnel]
    base_docs = max(funnel[0]["documents"], 1)
    base_chars = max(funnel[0]["characters"], 1)
    docs = [100 * entry["documents"] / base_docs for entry in funnel]
    chars = [100 * entry["characters"] / base_chars for entry in funnel]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(steps)), 4))
    positions = range(len(steps))
    ax.bar([p - 0.2 for p in positions], docs, width=0.4, label="documents")
    ax.bar([p + 0.2 for p in positions], chars, width=0.4, label="characters")
    for p, (d, entry) in enumerate(zip(docs, funnel)):
        ax.annotate(f"{entry['documents']:,}", (p - 0.2, d), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(positions), steps, rotation=30, ha="right")
    ax.set_ylabel("% of input kept")
    ax.set_ylim(0, 110)
    ax.set_title("What each step keeps")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(output_dir: str | Path, stats: dict) -> Path:
    """``report.md`` (funnel table, drop reasons, unreadable inputs) beside ``funnel.png``."""
    output_dir = Path(output_dir)
    plot_funnel(stats, output_dir / "funnel.png")
    funnel = stats["funnel"]
    base = max(funnel[0]["documents"], 1)
    lines = [
        "# Web-text pipeline report",
        "",
        f"{stats['input_files']} input files, {funnel[0]['documents']:,} documents read, "
        f"{stats['input_errors']} unreadable inputs; {stats['output']['documents']:,} documents "
        f"({stats['output']['characters']:,} characters) written to `{stats['output']['folder']}`.",
        "",
        "![funnel](funnel.png)",
        "",
        "| step | documents kept | % of input | characters kept | dropped | main reasons |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for entry in funnel:
        reasons = ", ".join(f"{reason} {count:g}" for reason, count in list(entry["drop_reasons"].items())[:3])
        lines.append(f"| {entry['step']} | {entry['documents']:,} | {100 * entry['documents'] / base:.1f} | "
                     f"{entry['characters']:,} | {entry['dropped']:,} | {reasons} |")
    if stats["errors"]:
        lines += ["", "## Unreadable inputs", "", "| file | record | error |", "|---|---:|---|"]
        for error in stats["errors"][:50]:
            record = "" if error["record"] is None else error["record"]
            lines.append(f"| `{error['file']}` | {record} | {error['error']} |")
        if len(stats["errors"]) > 50:
            lines.append(f"| … {len(stats['errors']) - 50} more in stats.json | | |")
    path = output_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
