"""The text `lamina-bench validate` prints: error tables per set, kind and GPU, the per-op table of the
dense layers, the e2e rows left out, and the gate's verdict."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from lamina_bench.validate.figures import OPERATOR, Figure, figure
from lamina_bench.validate.predict import OPERATOR_KINDS, Judged

KIND_ORDER = (OPERATOR, *OPERATOR_KINDS, "e2e", "dense_op")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def worst_line(j: Judged) -> str:
    cond = ", ".join(f"{k}={v}" for k, v in j.conditions.items())
    unit = "ms" if j.metric.endswith("_ms") else ("tok/s" if j.metric.endswith("_tok_per_s") else "us")
    return f"{100 * j.error:+.0f}% ({cond}; {j.measured:.4g} vs {j.predicted:.4g} {unit}; {j.file})"


def figures_table(figs: Mapping[str, Figure], split: str) -> str:
    lines = [f"{'kind':17s} {'GPU':9s} {'n':>5s} {'median':>7s} {'p90':>7s}  worst"]
    keys = [k for k in figs if k.startswith(f"{split}/")]

    def order(key: str):
        parts = key.split("/")
        kind = parts[1]
        return (KIND_ORDER.index(kind) if kind in KIND_ORDER else 99, len(parts), parts[-1])

    for key in sorted(keys, key=order):
        parts = key.split("/")
        kind, gpu = parts[1], (parts[2] if len(parts) > 2 else "all")
        if kind == "dense_op":
            continue
        f = figs[key]
        label = "operator (pooled)" if kind == OPERATOR else kind
        lines.append(
            f"{label:17s} {gpu:9s} {f.n:5d} {pct(f.median):>7s} {pct(f.p90):>7s}  {worst_line(f.worst)}"
        )
    return "\n".join(lines)


def per_op_table(judged: Iterable[Judged], split: str) -> str:
    """Secondary: each op of the dense layers alone, per op name (all GPUs of the set)."""
    by_op: dict[str, list[Judged]] = defaultdict(list)
    for j in judged:
        if j.kind == "dense_op" and j.split == split:
            by_op[str(j.conditions["op"])].append(j)
    if not by_op:
        return ""
    lines = [f"{'dense op':25s} {'n':>5s} {'median':>7s} {'p90':>7s}  worst"]
    for op, rows in sorted(by_op.items()):
        f = figure(rows)
        lines.append(f"{op:25s} {f.n:5d} {pct(f.median):>7s} {pct(f.p90):>7s}  {worst_line(f.worst)}")
    return "\n".join(lines)


def left_out_text(left_out: Sequence[tuple[str, int, str]]) -> str:
    if not left_out:
        return ""
    by_file: dict[tuple[str, str], list[int]] = defaultdict(list)
    for file, row, reason in left_out:
        by_file[(file, reason)].append(row)
    lines = ["e2e rows left out (the simulator cannot predict them):"]
    lines += [
        f"  {file} rows {', '.join(map(str, rows))}: {reason}"
        for (file, reason), rows in sorted(by_file.items())
    ]
    return "\n".join(lines)


def summary_text(
    figs: Mapping[str, Figure], judged: Sequence[Judged], splits: Sequence[str], calibration_date: str,
    left_out: Sequence[tuple[str, int, str]], regressions: Sequence[str] | None, figures_path: str,
) -> str:  # fmt: skip
    out = [f"operator model: calibration of {calibration_date}; error = predicted / measured - 1"]
    for split in splits:
        rows = [j for j in judged if j.split == split]
        if not rows:
            continue
        gpus = sorted({j.gpu for j in rows})
        sources = sorted({j.file.split("-", 1)[0] for j in rows})
        out += ["", f"== {split}: {len(rows)} judged rows; {len(gpus)} GPU types ({', '.join(gpus)}); "
                f"{len(sources)} sources ({', '.join(sources)})", figures_table(figs, split)]  # fmt: skip
        ops = per_op_table(judged, split)
        if ops:
            out += ["", ops]
    if left_out:
        out += ["", left_out_text(left_out)]
    if regressions is not None:
        out.append("")
        if regressions:
            out += [f"error figures got worse than {figures_path}:"] + [f"  {line}" for line in regressions]
        else:
            out.append(f"no validation figure got worse than {figures_path}")
    return "\n".join(out)
