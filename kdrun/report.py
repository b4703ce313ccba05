"""What a person sees: the end-of-run table, and a sweep's answer (files, plots and a table).

`write_report()` is the one code path behind both the end-of-sweep Hydra callback (`SweepSummary`)
and the `kdrun-report` command; the summarising itself is in kdrun/sweep.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from kdrun import KdrunError
from kdrun.sweep import (aggregate_seeds, format_value, is_grid, rank, read_jobs, read_lines, report_dir, short, summarise,
                         swept_keys, to_csv, to_markdown)

log = logging.getLogger(__name__)

# Written only when they apply: removed first, so that a rebuilt report never keeps a stale one.
OPTIONAL_FILES = ("summary_seeds.csv", "heatmap.png", "scatter.png", "lineplot.png", "tradeoff.png")


def _console() -> Console:
    # Piped into a file or a CI log, rich would wrap tables at 80 columns and split the values.
    return Console() if sys.stdout.isatty() else Console(width=160)


def summary_rows(summary: dict) -> dict:
    """Every model a run reports, by name: an offline run's teacher (and its ensemble's members) and
    student; the peers, generations or exit heads of the other schemes, and their ensemble."""
    rows = summary.get("models")
    if not rows:
        teacher = summary.get("teacher") or {}
        rows = {**{f"teacher.{name}": info for name, info in (teacher.get("members") or {}).items()},
                "teacher": summary.get("teacher"), "student": summary.get("student")}
    if summary.get("ensemble"):
        rows = {**rows, "ensemble": summary["ensemble"]}
    return {name: info for name, info in rows.items() if info}


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or _console()
    table = Table(title=f"kdrun: {summary['dataset']}, kd={'+'.join(summary['kd']) or 'none'}, "
                        f"scheme={summary['scheme']}")
    rows = summary_rows(summary)
    top5 = any("test_acc5" in info for info in rows.values())
    deployed = any("deploy" in info for info in rows.values())
    for column in ("model", "arch", "params", "test acc", *(("top-5",) if top5 else ()), "errors", "val epoch",
                   "source", *(DEPLOY_COLUMNS if deployed else ())):
        table.add_column(column, justify="left" if column in ("model", "arch", "source") else "right")
    for role, info in rows.items():
        acc5 = (f"{100 * info['test_acc5']:.2f}%" if "test_acc5" in info else "-",) if top5 else ()
        table.add_row(role, info["arch"], f"{info['params']:,}", f"{100 * info['test_acc']:.2f}%", *acc5,
                      f"{info['test_errors']}/{info['test_images']}", str(info.get("best_val_epoch") or "-"),
                      info.get("source", "trained"), *(deploy_cells(info) if deployed else ()))
    console.print(table)
    line = compression_line(summary.get("compression"))
    if line:
        console.print(line, highlight=False)
    console.print(f"run directory: {summary['run_dir']}  ({summary['wall_time_s']:.1f} s on {summary['device']})")


# ---------------------------------------------------------------------------------------------
# The deployment report as a person reads it (kdrun/deploy.py measures it)
# ---------------------------------------------------------------------------------------------

def human(n: Optional[float], unit: str = "") -> str:
    """1234567 -> '1.23 M'; bytes with unit='B' -> '1.23 MB'."""
    if n is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


DEPLOY_COLUMNS = ("weights", "mult-adds", "CPU ms (batch 1)", "images/s (batch 64)")


def deploy_cells(entry: dict) -> list:
    """The deployment columns (DEPLOY_COLUMNS) of one model's summary entry ('-' without a report)."""
    d = entry.get("deploy")
    if not d:
        return ["-"] * len(DEPLOY_COLUMNS)
    return [human(d["weights_bytes"], "B"), human(d["macs"]), f"{d['cpu_latency_ms']:.3g}", f"{d['throughput']:,.0f}"]


def compression_line(c: Optional[dict]) -> Optional[str]:
    """The student against the teacher, in one sentence."""
    if not c:
        return None
    parts = [f"{c['params']:.3g}x fewer parameters" if c.get("params") else None,
             f"{c['macs']:.3g}x fewer mult-adds" if c.get("macs") else None,
             f"{c['cpu_latency']:.3g}x faster on the CPU (batch 1)" if c.get("cpu_latency") else None,
             f"{c['throughput']:.3g}x the throughput (batch 64)" if c.get("throughput") else None]
    text = "student vs teacher: " + ", ".join(p for p in parts if p)
    if c.get("test_acc_delta") is not None:
        text += f"; test accuracy {100 * c['test_acc_delta']:+.2f} points"
    return text


def deploy_markdown(entries: dict) -> str:
    """A Markdown table of the models' deployment figures, {row label: summary entry}."""
    lines = ["| model | parameters | weights | mult-adds / image | CPU latency, batch 1 | throughput, batch 64 "
             "| test errors |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, entry in entries.items():
        d = entry.get("deploy") or {}
        lines.append(f"| {label} | {entry['params']:,} | {human(d.get('weights_bytes'), 'B')} | {human(d.get('macs'))} "
                     f"| {d.get('cpu_latency_ms', float('nan')):.3g} ms | {d.get('throughput', float('nan')):,.0f} "
                     f"images/s ({d.get('throughput_device', '-')}) | {entry['test_errors']} |")
    return "\n".join(lines) + "\n"


def print_layers(rows: list[dict], teacher: dict | None, console: Console | None = None) -> None:
    """The dry run's answer: which layers each method reads, and their shapes in both models."""
    console = console or _console()
    if not rows:
        console.print("dry run: no method reads intermediate layers (logits only)")
        return
    table = Table(title="kdrun dry run: the layers each KD method reads")
    for column in ("method", "student layer", "student shape", "teacher layer", "teacher shape", "adapter"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["method"], r["student"], str(r["student_shape"]), r["teacher"], str(r["teacher_shape"]),
                      r.get("adapter", "-"))
    console.print(table)
    if teacher:
        console.print(f"teacher: {teacher['arch']} ({teacher['source']})")


def _status(group: dict) -> str:
    """ok, shared (the result of a job outside the group: kdrun.baseline), failed, missing, or their counts."""
    shared = group.get("n_shared", 0)
    counts = {"ok": group["n"] - shared, "shared": shared, "failed": group["n_failed"], "missing": group["n_missing"]}
    if sum(n > 0 for n in counts.values()) == 1:  # all alike: the n column has the count
        return next(status for status, n in counts.items() if n)
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n)


def print_sweep(groups: list[dict], keys: list[str], by_seed: bool, has_scratch: bool, ranked_by: str,
                errors: list[tuple[str, str]], console: Console) -> None:
    """Best first, one line per job (per group of seeds when seeds were swept). Keys with one value in
    every job go in the caption: the terminal is narrow, and summary.csv has them all."""
    varying = swept_keys(keys, groups)
    fixed = " ".join(f"{k}={groups[0][k]}" for k in keys if k not in varying and groups[0][k] != "")
    keys = varying
    grouped = by_seed or any(" " in g["jobs"] for g in groups)  # seeds, or a baseline's shared jobs
    title = f"kdrun sweep: {len(groups)} {'configurations' if grouped else 'jobs'}, best first by " \
            f"{'validation' if 'val' in ranked_by else 'test'} accuracy"
    table = Table(title=title, caption=f"all jobs: {fixed}" if fixed else None)
    if not by_seed:
        table.add_column("job", justify="right")
    for key in keys:
        table.add_column(key, justify="right", overflow="fold")
    table.add_column("status", min_width=6)
    if by_seed:
        table.add_column("n", justify="right")
    top5 = any(g.get("student_test_acc5_mean") is not None for g in groups)
    for column in ("student test %", *(("top-5 %",) if top5 else ()), "val %", "teacher test %",
                   *(("scratch %", "gain") if has_scratch else ())):
        table.add_column(column, justify="right", min_width=6)  # a narrow terminal folds keys, not numbers
    for g in groups:
        student = format_value("student_test_acc", g["student_test_acc_mean"])
        if g["student_test_acc_std"] is not None:
            student += f" ± {format_value('student_test_acc', g['student_test_acc_std'])}"
        cells = [g["jobs"]] if not by_seed else []
        cells += [short(g[k]) for k in keys] + [_status(g)] + ([str(g["n"])] if by_seed else [])
        cells += [student, *((format_value("student_test_acc5", g["student_test_acc5_mean"]),) if top5 else ()),
                  format_value("student_val_acc", g["student_val_acc_mean"]),
                  format_value("teacher_test_acc", g["teacher_test_acc_mean"])]
        if has_scratch:
            cells += [format_value("scratch_test_acc", g["scratch_test_acc"]), format_value("gain", g["gain_mean"])]
        table.add_row(*cells)
    console.print(table)
    for job, error in errors:  # below the table, where a long message has the whole width
        console.print(f"[red]failed[/red] job {job}: {error}", highlight=False)


def write_report(paths: list[Path], out_dir: Path, console: Optional[Console] = None) -> dict:
    """Reads every run directory under `paths` and writes into `out_dir`: summary.csv (one row per job),
    summary.md (best first), summary_seeds.csv (when seeds were swept), heatmap.png (two keys crossed),
    scatter.png (two keys sampled) or lineplot.png (one key), tradeoff.png (accuracy against cost, when
    the runs have a deployment report) and curves/<job>.png; prints the table.
    Returns the counts of jobs by status and the files written."""
    from kdrun import plots

    console = console or _console()
    jobs = read_jobs(paths)
    summary = summarise(jobs)
    group_columns, groups = aggregate_seeds(summary)
    by_seed = "seed" in summary.keys
    group_keys = [k for k in summary.keys if k != "seed"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OPTIONAL_FILES:
        (out_dir / name).unlink(missing_ok=True)

    written = ["summary.csv", "summary.md"]
    (out_dir / "summary.csv").write_text(to_csv(summary.columns, summary.rows))
    ranked_rows, ranked_by = rank(summary.rows)
    ranked_groups, _ = rank(groups, suffix="_mean")
    md = [f"# Sweep summary: {len(jobs)} jobs, best first by `{ranked_by}`\n",
          "Accuracies in %" + (", gains in percentage points over the scratch baseline (kd=none jobs)"
                               if summary.has_scratch else "") + ".\n",
          to_markdown(summary.columns, ranked_rows)]
    if by_seed:
        (out_dir / "summary_seeds.csv").write_text(to_csv(group_columns, groups))
        written.append("summary_seeds.csv")
        md += ["\n## Mean over seeds (std: sample standard deviation, n: ok jobs)\n",
               to_markdown(group_columns, ranked_groups)]
    (out_dir / "summary.md").write_text("\n".join(md))

    # The kd=none baseline is no axis: the line plot draws it, the tables give each job's gain over it.
    plotted = [g for g in groups if not g["baseline"]] or groups
    axes = swept_keys(group_keys, plotted)
    over = " (mean over seeds)" if by_seed else ""
    setting = setting_title(jobs)
    colour = plots.colour_key(plotted)[1].replace(" (%)", "")
    if len(axes) == 2 and is_grid(plotted, *axes):
        plots.heatmap(out_dir / "heatmap.png", axes[0], axes[1], plotted,
                      f"{setting}\nstudent test accuracy{over}; colour: {colour}")
        written.append("heatmap.png")
    elif len(axes) == 2:
        plots.scatter(out_dir / "scatter.png", axes[1], axes[0], plotted,
                      f"{setting}\nstudent test accuracy{over}; colour: {colour}")
        written.append("scatter.png")
    elif len(axes) == 1:
        plots.line_plot(out_dir / "lineplot.png", axes[0], plotted, f"{setting}\naccuracy{over}")
        written.append("lineplot.png")
    if any(r["status"] == "ok" and r.get("student_macs") for r in summary.rows):
        plots.tradeoff(out_dir / "tradeoff.png", summary.rows, "accuracy against cost: one point per job")
        written.append("tradeoff.png")
    curves = 0
    for job in jobs:
        records = read_lines(job.path / "metrics.jsonl")
        if records:
            (out_dir / "curves").mkdir(exist_ok=True)
            title = f"{setting_title([job])}, job {job.name}: " + \
                (" ".join(f"{k}={v}" for k, v in job.overrides.items()) or "defaults")
            plots.learning_curve(out_dir / "curves" / f"{job.name.replace('/', '_')}.png", records, title)
            curves += 1
    if curves:
        written.append(f"curves/ ({curves} learning curves)")

    errors = [(r["job"], r["error"]) for r in summary.rows if r["error"]]
    print_sweep(ranked_groups, group_keys, by_seed, summary.has_scratch, ranked_by, errors, console)
    counts = {s: sum(r["status"] == s for r in summary.rows) for s in ("ok", "shared", "failed", "missing")}
    shared = f", {counts['shared']} shared (kd=none: an equal job's result)" if counts["shared"] else ""
    console.print(f"{len(jobs)} jobs: {counts['ok']} ok{shared}, {counts['failed']} failed, {counts['missing']} missing. "
                  f"Written to {out_dir}: {', '.join(written)}", highlight=False)
    return {"jobs": len(jobs), **counts, "written": written}


def setting_title(jobs: list) -> str:
    """What the plots are of: `dataset: teacher -> student`, from the jobs' summaries (several values
    joined by /; a sweep of students alone has no teacher)."""
    def values(get) -> str:
        return "/".join(dict.fromkeys(str(v) for job in jobs if job.summary and (v := get(job.summary))))

    dataset = values(lambda s: s.get("dataset")) or "?"
    teacher = values(lambda s: (s.get("teacher") or {}).get("arch"))
    student = values(lambda s: (s.get("student") or {}).get("arch")) or "?"
    return f"{dataset}: {teacher} -> {student}" if teacher else f"{dataset}: {student}"


class SweepSummary(Callback):
    """Registered in configs/config.yaml (hydra.callbacks): at the end of every multirun, the sweep's
    summary, plots and table, in the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from kdrun import distributed
        from kdrun.loggers import log_sweep

        if not distributed.is_main():  # a sweep run under torchrun: rank 0 writes its summary
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report([sweep_dir], sweep_dir)
        except Exception:  # the jobs' own results are safe on disk: a report problem must not hide them
            log.exception("the sweep summary failed; rebuild it with: kdrun-report %s", sweep_dir)
            return
        log_sweep(config.get("logger"), sweep_dir, report)  # e.g. into the sweep's MLflow experiment


def main(argv: Optional[list[str]] = None) -> None:
    """`kdrun-report PATH...`: rebuilds a sweep's summary, plots and table from its run directories."""
    parser = argparse.ArgumentParser(
        prog="kdrun-report",
        description="Summarise kdrun runs: summary.csv, summary.md, plots and a table. PATH is a sweep "
                    "directory, a run directory, or any folder holding run directories; jobs that failed or "
                    "are still running are listed as such.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("-o", "--out", type=Path, help="where to write (default: into a sweep or run directory; "
                                                             "beside any other folder, as <folder>-report)")
    args = parser.parse_args(argv)
    if args.out is None and len(args.paths) > 1:
        sys.exit("kdrun-report: error: several PATHs: say where to write the report with --out DIR")
    try:
        write_report(args.paths, args.out or report_dir(args.paths[0]))
    except KdrunError as e:
        sys.exit(f"kdrun-report: error: {e}")


if __name__ == "__main__":
    main()
