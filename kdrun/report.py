"""What a person sees at the end of a run: a rich table of the models' test results."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console()
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
