"""`--plot PATH.png` of a `--target` run: each group's damage curve with the chosen point, and the share
of the cost each group's removable channels carry before and after (matplotlib, Agg, no display).

Drawn from the report alone (its steps' "target" records), so a saved report can be drawn again. In a
chain, the last step that took the target is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: groups drawn as small multiples (the largest cost shares), and bars in the share chart
CURVES = 12
BARS = 24
COLUMNS = 4


def plot_allocation(report: dict, path: str | Path) -> Path:
    """Write the figure of `report`'s allocation to `path` (PNG); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (optional dependency)
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    records = [s["target"] for s in report.get("steps", []) if s.get("target")]
    if not records:
        raise ValueError("the report has no --target allocation to draw")
    record = records[-1]
    rows = sorted(record["groups"].items(), key=lambda item: -item[1]["share_before"])
    shown = rows[:CURVES]
    lines = max(1, int(np.ceil(len(shown) / COLUMNS)))
    fig = Figure(figsize=(3.3 * COLUMNS, 2.6 * lines + 3.4))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(lines + 1, COLUMNS, height_ratios=[1.0] * lines + [1.25])
    for number, (gid, row) in enumerate(shown):
        ax = fig.add_subplot(grid[number // COLUMNS, number % COLUMNS])
        ax.plot(row["curve_removed"], row["curve_damage"], lw=1.3, color="tab:blue")
        chosen = row["removed"]
        ax.plot([chosen], [np.interp(chosen, row["curve_removed"], row["curve_damage"])], "o", color="tab:red")
        if "probes" in row:
            ax.plot(row["probes"]["removed"], row["probes"]["measured"], "x", color="black", ms=5)
        ax.set_title(f"g{gid} {_short(row['name'])}: {chosen}/{row['size']} removed", fontsize=8)
        ax.set_xlabel("channels removed", fontsize=7)
        ax.set_ylabel("damage", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=6)
    bars = fig.add_subplot(grid[lines, :])
    drawn = rows[:BARS]
    x = np.arange(len(drawn))
    bars.bar(x - 0.2, [100 * r["share_before"] for _, r in drawn], 0.4, label="before", color="tab:gray")
    bars.bar(x + 0.2, [100 * r["share_after"] for _, r in drawn], 0.4, label="after", color="tab:blue")
    bars.set_xticks(x, [f"g{gid} {_short(r['name'], 14)}" for gid, r in drawn], rotation=60, ha="right", fontsize=6)
    bars.set_ylabel(f"% of the original {record['kind']}", fontsize=8)
    bars.set_title(f"{record['kind']} carried by each group's removable channels", fontsize=9)
    bars.legend(fontsize=7)
    reached = 100 * record["planned_cost"] / record["cost_before"] if record["cost_before"] else 100.0
    fig.suptitle(
        f"--target {record['target']}: planned {reached:.1f}% of this step's {record['kind']}; damage = "
        f"{record['damage_unit']} (o chosen, x measured)",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, format="png")
    return path


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]
