"""The scale benchmark's plot: peak RSS and cells/s of every stage against the atlas size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot", "short"]


def short(n: int) -> str:
    """``1M``, ``2.5M``, ``200k``: a cell count as a label."""
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1000:g}k"


def plot(summary: dict[str, dict[str, dict[str, Any]]], sizes: list[int], path: Path, title: str) -> None:
    """Peak RSS and cells/s of each stage against the number of cells (one line per stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(summary[f"local {sizes[0]:,}"])
    fig, (rss, rate) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in stages:
        runs = [summary[f"local {n:,}"][stage] for n in sizes]
        line = rss.plot(sizes, [r["peak_mib"] for r in runs], marker="o", label=stage)[0]
        if all("peak_anon_mib" in r for r in runs):
            rss.plot(sizes, [r["peak_anon_mib"] for r in runs], color=line.get_color(), linestyle="--")
        rate.plot(sizes, [r["cells"] / r["seconds"] for r in runs], marker="o", label=stage)
    base = min(summary[f"local {n:,}"][s]["base_mib"] for n in sizes for s in stages)
    rss.axhline(base, color="grey", linestyle=":", linewidth=1, label="after imports (no torch)")
    rss.set(
        xlabel="cells in the atlas",
        ylabel="peak RSS of the stage's process (MiB)",
        title="peak RSS (dashed: anonymous only, mapped files left out)",
    )
    rss.set_ylim(0, None)
    rate.set(
        xlabel="cells in the atlas",
        ylabel="cells/s (optimize, snapshot: atlas cells / s)",
        title="throughput",
        yscale="log",
    )
    for ax in (rss, rate):
        ax.set_xticks(sizes, [short(n) for n in sizes])
        ax.grid(alpha=0.3)
    rss.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
