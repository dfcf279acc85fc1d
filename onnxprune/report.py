"""Reports: per-group rows, JSON, and the short Markdown/terminal summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import datasplit, io
from .analysis import Analysis
from .analysis.rewrites import IoDim
from .plan import PruningPlan, jsonable


def group_rows(analysis: Analysis, plan: PruningPlan | None = None) -> list[dict]:
    """One row per group: id, size, kept, producers, consumers, params, MACs, frozen reason, notes."""
    removed = plan.removed if plan else frozenset()
    rows = []
    for group in analysis.groups:
        row = {
            "id": group.id,
            "size": group.size,
            "kept": group.size - sum(1 for c in group.channels if c in removed),
            "producers": [p.node for p in group.producers],
            "consumers": [c.node for c in group.consumers],
            "params": group.params,
            "macs": group.macs,
            "frozen": group.frozen,
            "unit": group.unit,
        }
        if plan and group.id in plan.group_notes:
            row["notes"] = plan.group_notes[group.id]
        rows.append(row)
    return rows


def io_changes(analysis: Analysis, plan: PruningPlan) -> list[dict]:
    """Graph inputs and outputs whose size changes with the heads removed (KV caches): name, kind
    ("input"/"output"), axis, size before and after, and the positions kept (a caller feeds a past cache
    sliced to them, and reads the present one at them)."""
    removed = plan.removed_mask(analysis.num_channels)
    changes = []
    for record in analysis.rewrites:
        if not isinstance(record, IoDim):
            continue
        ids = analysis.tensor_labels[record.tensor]
        moved = np.moveaxis(ids, record.axis, 0).reshape(ids.shape[record.axis], -1)
        kept = np.flatnonzero(~(removed[moved] & (moved >= 0)).all(axis=1))
        if len(kept) < len(moved):
            changes.append({"name": record.tensor, "kind": record.kind, "axis": record.axis,
                            "before": len(moved), "after": len(kept), "kept": kept.tolist()})  # fmt: skip
    return changes


def compose_io_changes(first: list[dict], then: list[dict]) -> list[dict]:
    """The changes of two steps in a row as one (positions kept by `then` index those `first` kept)."""
    merged = {(c["name"], c["axis"]): dict(c) for c in first}
    for change in then:
        key = (change["name"], change["axis"])
        if key in merged:
            earlier = merged[key]
            change = {**change, "before": earlier["before"], "kept": [earlier["kept"][k] for k in change["kept"]]}
        merged[key] = change
    return list(merged.values())


def build_report(
    *, method: str, options, pipeline, before: dict, model, macs_after: int, steps: list[dict], validation,
    validation_source: str | None, statistics: list[dict], seconds: dict, data: dict | None = None,
    changed_io: list[dict] = (),
) -> dict:  # fmt: skip
    """The JSON report of a prune, built in one place: sizes before and after, per-step rows (the
    groups of a single step at the top level), the onnxruntime passes of the statistics stage,
    the samples that calibrated and validated (`data`: onnxprune.datasplit notes), validation and timings."""
    report = {
        "method": method,
        "options": {**options.as_dict(), **{k: v for k, v in vars(pipeline).items() if k != "progress"}},
        "params_before": before["params"],
        "params_after": io.count_params(model),
        "nonzero_params_after": io.count_nonzero_params(model),
        "macs_before": before["macs"],
        "macs_after": macs_after,
        "file_bytes_before": before["bytes"],
        "file_bytes_after": model.ByteSize(),
        "groups": steps[0]["groups"] if len(steps) == 1 else [g for s in steps for g in s["groups"]],
        "steps": steps,
        "statistics": statistics,
        "data": data or {},
        "changed_io": list(changed_io),
    }
    if validation is not None:
        report["validation"] = validation
        report["validation_source"] = validation_source
    report["seconds"] = seconds
    return report


def write_json(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(jsonable(report), indent=1))


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal after `prune`."""

    def pct(after, before):
        return f"{after:,} ({100 * after / before:.1f}%)" if before else f"{after:,}"

    lines = [
        f"method     {report['method']}",
        f"params     {report['params_before']:,} -> {pct(report['params_after'], report['params_before'])}",
        f"MACs       {report['macs_before']:,} -> {pct(report['macs_after'], report['macs_before'])}",
        f"file       {report['file_bytes_before']:,} B -> {report['file_bytes_after']:,} B",
    ]
    nonzero = report.get("nonzero_params_after")
    if nonzero is not None and nonzero != report["params_after"]:
        lines.insert(2, f"nonzero    {pct(nonzero, report['params_before'])} parameters are not zero")
    steps = report.get("steps") or [{"method": report["method"], "groups": report.get("groups", [])}]
    for number, step in enumerate(steps, start=1):  # a chain analyzes the model again at every step
        groups = step["groups"]
        pruned = sum(1 for g in groups if g["kept"] < g["size"])
        frozen = sum(1 for g in groups if g["frozen"] and g["kept"] == g["size"])
        which = f" ({step['method']}, step {number})" if len(steps) > 1 else ""
        lines.append(f"groups     {len(groups)} total, {pruned} pruned, {frozen} frozen{which}")
    lines.extend(target_lines(report))
    lines += datasplit.summary_lines(report.get("data") or {})
    for change in report.get("changed_io", []):
        lines.append(
            f"changed    graph {change['kind']} '{change['name']}' axis {change['axis']}: "
            f"{change['before']} -> {change['after']} (attention heads removed: feed and read it at that size)"
        )
    validation = report.get("validation")
    if validation:
        lines += comparison_lines(validation, report.get("validation_source", "validation data"))
    seconds = report.get("seconds", {})
    lines.append("seconds    " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    return lines


#: groups named in the summary's allocation lines (all of them are in the report)
SUMMARY_GROUPS = 6


def target_lines(report: dict) -> list[str]:
    """--target: what was asked, what the written model reached, and the groups that gave most."""
    target = report.get("target")
    if not target:
        return []
    kind = target["kind"]
    if "reached" in target:
        state = "met" if target["met"] else "NOT met: the allowed removals cannot reach it"
        lines = [
            f"target     {target['target']}: at most {target['budget']:,.0f} {kind}; reached {target['reached']:,} "
            f"({100 * target['reached_fraction']:.1f}% of {target['before']:,}), counted on the written model: {state}"
        ]
    else:
        lines = [f"target     {target['target']}: planned {100 * target.get('planned_fraction', 1.0):.1f}% of {kind}"]
        if target.get("closed_loop"):
            timed = ", ".join(f"{r['measured']:.2f}" for r in target["closed_loop"])
            lines[0] += f" (allocations timed while planning: {timed} of the original)"
        if "measured_message" in target:
            lines.append(f"measured   {target['measured_message']}")
    records = [s["target"] for s in report.get("steps", []) if s.get("target")]
    if records:
        rows = sorted(records[-1]["groups"].items(), key=lambda item: -item[1]["removed"] / item[1]["size"])
        shown = [f"{r['name']} {r['removed']}/{r['size']}" for _, r in rows[:SUMMARY_GROUPS] if r["removed"]]
        more = f", ... ({len(rows) - SUMMARY_GROUPS} more groups)" if len(rows) > SUMMARY_GROUPS else ""
        lines.append(f"allocation by {records[-1]['damage_unit']}: removed {', '.join(shown) or 'nothing'}{more}")
        lines.append("           per group, how many went and why: the report's groups[].notes.why")
    return lines


#: the columns of a comparison: metric key, header, format
_METRICS = (
    ("rel_l2", "rel L2", ".4g"),
    ("cosine", "cosine", ".6f"),
    ("top1_agreement", "top-1 agree", ".4f"),
    ("max_abs", "max |diff|", ".4g"),
)


def comparison_lines(validation: dict, source: str) -> list[str]:
    """How far the outputs moved (one row per output: relative L2, cosine, top-1 agreement for
    classifier outputs, max |diff|) and, with labels, the accuracy before and after on `source`."""
    outputs = validation["outputs"]
    width = max([len("output"), *(len(name) for name in outputs)])
    lines = [f"{'output':<{width}}  " + "  ".join(f"{title:>11}" for _, title, _ in _METRICS)]
    for name, metrics in outputs.items():
        cells = [format(metrics[key], fmt) if key in metrics else "-" for key, _, fmt in _METRICS]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{cell:>11}" for cell in cells))
    if "accuracy_after" in validation:
        before, after = validation["accuracy_before"], validation["accuracy_after"]
        lines.append(
            f"accuracy   {before:.4f} -> {after:.4f} ({100 * (after - before):+.2f} points) on "
            f"{validation['samples']} labeled samples, {source}"
        )
    return lines


def inspect_table(analysis: Analysis, totals: dict) -> list[str]:
    header = f"{'group':>5} {'channels':>8} {'free':>5} {'params':>10} {'MACs':>12}  producers -> consumers | frozen"
    lines = [header]
    for row in group_rows(analysis):
        producers = ", ".join(row["producers"][:3]) + (" ..." if len(row["producers"]) > 3 else "")
        consumers = ", ".join(row["consumers"][:3]) + (" ..." if len(row["consumers"]) > 3 else "")
        free = len(analysis.groups[row["id"]].free)
        frozen = f" | {row['frozen']}" if row["frozen"] else ""
        unit = f"[units: {row['unit']}] " if row["unit"] != "channel" else ""
        lines.append(
            f"{row['id']:>5} {row['size']:>8} {free:>5} {row['params']:>10,} {row['macs']:>12,}  "
            f"{unit}{producers} -> {consumers or '(none)'}{frozen}"
        )
    lines.append("")
    lines.append(
        f"params {totals['params']:,}  MACs {totals['macs']:,}  groups {totals['groups']} "
        f"({totals['prunable_groups']} prunable)  channels {totals['channels']} "
        f"({totals['prunable_channels']} free)"
    )
    lines.append(
        f"prunable share: {100 * totals['prunable_params_share']:.1f}% of params, "
        f"{100 * totals['prunable_macs_share']:.1f}% of MACs"
    )
    return lines
