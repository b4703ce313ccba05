"""What a person sees at the end of a run: a rich table of the models' test results."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table


def _console() -> Console:
    # Piped into a file or a CI log, rich would wrap tables at 80 columns and split the values.
    return Console() if sys.stdout.isatty() else Console(width=160)


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or _console()
    table = Table(title=f"kdrun: {summary['dataset']}, kd={'+'.join(summary['kd']) or 'none'}, "
                        f"scheme={summary['scheme']}")
    for column in ("model", "arch", "params", "test acc", "errors", "val epoch", "source"):
        table.add_column(column, justify="left" if column in ("model", "arch", "source") else "right")
    for role in ("teacher", "student"):
        info = summary.get(role)
        if not info:
            continue
        table.add_row(role, info["arch"], f"{info['params']:,}", f"{100 * info['test_acc']:.2f}%",
                      f"{info['test_errors']}/{info['test_images']}", str(info.get("best_val_epoch") or "-"),
                      info.get("source", "trained"))
    console.print(table)
    console.print(f"run directory: {summary['run_dir']}  ({summary['wall_time_s']:.1f} s on {summary['device']})")


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
