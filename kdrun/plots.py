"""The sweep's figures (PNG): a heatmap over two swept keys, a line plot over one, a learning curve per job.

matplotlib's Figure is used without pyplot: no global backend or display is touched (a cluster node
has none), and figures are freed as soon as they are saved.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Optional

from kdrun.sweep import short, value_order


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _numeric(values: list[str]) -> Optional[list[float]]:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def colour_key(groups: list[dict]) -> tuple[str, str]:
    """What the plots colour by: the validation accuracy, which the sweep selects on (the test
    accuracy, the reported figure, is written on them); the test accuracy only without a validation split."""
    if any(g.get("student_val_acc_mean") is not None for g in groups):
        return "student_val_acc_mean", "student validation accuracy (%)"
    return "student_test_acc_mean", "student test accuracy (%)"


def heatmap(path: Path, row_key: str, col_key: str, groups: list[dict], title: str):
    """Each (row_key, col_key) cell coloured by the student's mean validation accuracy, with its mean
    test accuracy written in it; a cell with no `ok` job says why. Returns the figure."""
    rows = value_order(g[row_key] for g in groups)
    cols = value_order(g[col_key] for g in groups)
    cells = {(g[row_key], g[col_key]): g for g in groups}
    key, label = colour_key(groups)
    grid = [[math.nan] * len(cols) for _ in rows]
    fig = _figure(1.6 + 1.1 * len(cols), 1.4 + 0.7 * len(rows))
    ax = fig.subplots()
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            g = cells.get((r, c))
            if g and g[key] is not None:
                grid[i][j] = 100 * g[key]
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=label)
    finite = [v for line in grid for v in line if not math.isnan(v)]
    middle = (min(finite) + max(finite)) / 2 if finite else 0
    if len(rows) * len(cols) <= 400:  # beyond that the numbers are unreadable anyway
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                g = cells.get((r, c))
                if not math.isnan(grid[i][j]) and g["student_test_acc_mean"] is not None:
                    std = g["student_test_acc_std"]
                    text = f"{100 * g['student_test_acc_mean']:.2f}" + (f"\n±{100 * std:.2f}" if std is not None else "")
                    color = "black" if grid[i][j] > middle else "white"
                else:
                    text = "failed" if g and g["n_failed"] else "missing" if g else ""
                    color = "red"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(cols)), [short(c) for c in cols])
    ax.set_yticks(range(len(rows)), [short(r) for r in rows])
    ax.set_xlabel(col_key)
    ax.set_ylabel(row_key)
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=100)
    return fig


def scatter(path: Path, x_key: str, y_key: str, groups: list[dict], title: str):
    """Two numeric keys sampled rather than gridded (an Optuna search): each job a point coloured by
    its student validation accuracy, labelled with its test accuracy; jobs without a result are red
    crosses. Returns the figure."""
    fig = _figure(6.5, 4.5)
    ax = fig.subplots()
    key, label = colour_key(groups)
    done = [g for g in groups if g["student_test_acc_mean"] is not None and g[key] is not None]
    if done:
        points = ax.scatter([float(g[x_key]) for g in done], [float(g[y_key]) for g in done],
                            c=[100 * g[key] for g in done], cmap="viridis", s=60)
        fig.colorbar(points, ax=ax, label=label)
        for g in done:
            ax.annotate(f"{100 * g['student_test_acc_mean']:.2f}", (float(g[x_key]), float(g[y_key])),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
    undone = [g for g in groups if g not in done]
    if undone:
        ax.scatter([float(g[x_key]) for g in undone], [float(g[y_key]) for g in undone], marker="x",
                   color="red", label="failed or missing")
        ax.legend()
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return fig


def line_plot(path: Path, key: str, groups: list[dict], title: str):
    """Mean student test accuracy (error bars: std over seeds) and validation accuracy against one
    key, with the teacher and the scratch baseline when the sweep has them. Returns the figure."""
    values = value_order(g[key] for g in groups)
    by_value = {g[key]: g for g in groups}
    numeric = _numeric(values)
    xs = numeric if numeric is not None else list(range(len(values)))
    fig = _figure(6, 4)
    ax = fig.subplots()
    series = [("student", "student_test_acc_mean", "student_test_acc_std", "o-"),
              ("student (validation)", "student_val_acc_mean", None, "o:"),
              ("teacher", "teacher_test_acc_mean", None, "s--"),
              ("student from scratch (kd=none)", "scratch_test_acc", None, "^:")]
    for label, mean_key, std_key, style in series:
        points = [(x, by_value[v].get(mean_key), by_value[v].get(std_key) if std_key else None)
                  for x, v in zip(xs, values)]
        points = [(x, m, s) for x, m, s in points if m is not None]
        if not points:
            continue
        ax.errorbar([p[0] for p in points], [100 * p[1] for p in points],
                    yerr=[100 * (p[2] or 0) for p in points] if std_key else None,
                    fmt=style, capsize=4, label=label)
    if numeric is None:
        ax.set_xticks(xs, [short(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100)
    return fig


def learning_curve(path: Path, records: list[dict], title: str) -> None:
    """Loss and accuracy per epoch of each model in metrics.jsonl: a colour per model, training solid,
    validation dashed. A student's training loss includes its weighted KD terms; validation is plain CE."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(10, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for model, color in (("teacher", "tab:gray"), ("student", "tab:blue")):
        lines = sorted((r for r in records if r.get("model") == model), key=lambda r: r["epoch"])
        if not lines:
            continue
        epochs = [r["epoch"] for r in lines]
        for ax, metric, scale in ((loss_ax, "loss", 1), (acc_ax, "acc", 100)):
            for split, style in (("train", "-"), ("val", "--")):
                ys = [r.get(f"{split}/{metric}") for r in lines]
                if any(y is not None for y in ys):
                    ax.plot(epochs, [math.nan if y is None else scale * y for y in ys], style, color=color,
                            marker="o", markersize=3, label=f"{model} {split}")
    loss_ax.set_ylabel("loss (training: with the KD terms)")
    acc_ax.set_ylabel("accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)


def tradeoff(path: Path, rows: list[dict], title: str) -> "Figure":
    """What a user picks a student from: test accuracy against the cost of a model, multiply-adds per
    image (left) and CPU latency at batch 1 (right), one point per job (its name beside it); the
    jobs' teachers are stars and the students trained from scratch (kd=none) triangles. The cost
    axes are logarithmic when the models' costs span more than 10x. Returns the figure (saved)."""
    done = [r for r in rows if r["status"] == "ok" and r.get("student_macs") and r.get("student_test_acc") is not None]
    fig = _figure(11, 4.5)
    for ax, (cost, label) in zip(fig.subplots(1, 2), (("macs", "multiply-adds per image"),
                                                      ("cpu_latency_ms", "CPU latency, batch 1 (ms)"))):
        kinds = (("distilled student", [r for r in done if not r.get("is_scratch")], "o", "tab:blue"),
                 ("student from scratch (kd=none)", [r for r in done if r.get("is_scratch")], "^", "tab:orange"))
        for name, points, marker, color in kinds:
            points = [r for r in points if r.get(f"student_{cost}")]
            if points:
                ax.scatter([r[f"student_{cost}"] for r in points], [100 * r["student_test_acc"] for r in points],
                           marker=marker, color=color, s=50, label=name)
                names: dict = {}  # jobs at the same point share one label
                for r in points:
                    names.setdefault((r[f"student_{cost}"], 100 * r["student_test_acc"]), []).append(r["job"])
                for xy, jobs in names.items():
                    ax.annotate(", ".join(jobs), xy, textcoords="offset points", xytext=(4, 4), fontsize=7)
        # One star per teacher: the jobs of a sweep share a cached teacher (the same multiply-adds and
        # accuracy), but each measures its CPU latency anew: its median.
        teachers: dict = {}
        for r in done:
            if r.get(f"teacher_{cost}") and r.get("teacher_test_acc") is not None:
                teachers.setdefault((r.get("teacher_macs"), r["teacher_test_acc"]), []).append(r[f"teacher_{cost}"])
        if teachers:
            ax.scatter([statistics.median(xs) for xs in teachers.values()], [100 * acc for _, acc in teachers],
                       marker="*", s=160, color="tab:gray", label="teacher")
        xs = [x for c in ax.collections for x, _ in c.get_offsets()]
        if xs and max(xs) > 10 * min(xs):  # models of very different sizes; else plain ticks read better
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3, which="both")
        if ax.collections:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    return fig


def confusion_matrix(path: Path, matrix: list, classes: list, title: str) -> None:
    """Counts of (true class, predicted class), rows normalised to the share of each true class; the
    counts are written in the cells when there are few enough classes to read them."""
    n = len(classes)
    totals = [max(1, sum(row)) for row in matrix]
    shares = [[count / total for count in row] for row, total in zip(matrix, totals)]
    side = min(14.0, 2.5 + 0.45 * n)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    if n <= 20:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                            color="white" if shares[i][j] > 0.5 else "black")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=100)
