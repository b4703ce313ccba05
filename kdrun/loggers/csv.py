"""CSV, in the manner of Lightning's CSVLogger: `<run_dir>/csv/metrics.csv` (a row per model per
epoch, a column per metric) and `hparams.yaml`, for a spreadsheet or pandas. No package needed."""
from __future__ import annotations

import csv
from typing import Any, Dict

import yaml

from kdrun.loggers import Logger, RunInfo


class CSVLogger(Logger):
    def __init__(self, dir: str, *, run: RunInfo):
        self.path = run.run_dir / dir
        self.path.mkdir(parents=True, exist_ok=True)
        self.file = self.path / "metrics.csv"
        # A resumed run keeps its earlier rows; a row of the same model and epoch is replaced.
        self.rows: Dict[tuple, dict] = {}
        if self.file.is_file():
            with self.file.open(newline="") as f:
                self.rows = {(r["model"], r["epoch"]): r for r in csv.DictReader(f)}

    def describe(self) -> str:
        return str(self.file)

    def log_params(self, params: Dict[str, Any]) -> None:
        (self.path / "hparams.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def log_metrics(self, record: dict) -> None:
        self.rows[(record["model"], str(record["epoch"]))] = record
        # The columns grow as new models and terms appear (a teacher has no KD term): rewritten whole.
        columns = list(dict.fromkeys(k for row in self.rows.values() for k in row))
        tmp = self.file.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows.values())
        tmp.replace(self.file)
