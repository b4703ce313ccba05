"""TensorBoard: event files in the run directory (`<run_dir>/tensorboard/`), so that a sweep's jobs
are one folder each under the sweep directory and `tensorboard --logdir <sweep>` compares them,
with their hyperparameters and results in the HPARAMS tab."""
from __future__ import annotations

import json
from typing import Any, Dict

from kdrun.loggers import Logger, RunInfo, numbers, require, summary_metrics


class TensorBoardLogger(Logger):
    def __init__(self, dir: str, *, run: RunInfo):
        tensorboard = require("torch.utils.tensorboard", "tensorboard")
        self.path = run.run_dir / dir
        self.top = run.sweep_dir or str(run.run_dir)
        self.writer = tensorboard.SummaryWriter(str(self.path))
        self.params: Dict[str, Any] = {}

    def describe(self) -> str:
        return f"{self.path}  (watch: tensorboard --logdir {self.top})"

    def log_params(self, params: Dict[str, Any]) -> None:
        # The HPARAMS tab takes numbers, strings and booleans; it gets them with the results, at the end.
        self.params = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in params.items()}
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in self.params.items()))

    def log_metrics(self, record: dict) -> None:
        for key, value in numbers(record).items():
            self.writer.add_scalar(f"{record['model']}/{key}", value, record["epoch"])
        self.writer.flush()  # a run is watched while it trains

    def log_summary(self, summary: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = summary_metrics(summary)
        # What SummaryWriter.add_hparams writes, but into this run's own folder (add_hparams makes a
        # new sub-folder per call): the plugin reads each metric from the scalar of the same tag.
        for proto in hparams(self.params, metrics):
            self.writer.file_writer.add_summary(proto)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value)

    def close(self, status: str) -> None:
        self.writer.close()
