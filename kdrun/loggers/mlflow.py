"""MLflow: a run per kdrun run, an experiment per sweep (its jobs' runs side by side, and a
`sweep summary` run with the sweep's tables and plots).

Offline by default: a SQLite store in `save_dir` (outputs/mlruns/mlflow.db, artifacts beside it).
MLflow 3 refuses its old ./mlruns file store unless told otherwise and recommends a database; SQLite
needs no server. `tracking_uri` (or $MLFLOW_TRACKING_URI) points at a server instead.
"""
from __future__ import annotations

import os
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional

from kdrun.loggers import Logger, RunInfo, numbers, require, summary_metrics

SINGLE_RUN_EXPERIMENT = "kdrun"


def name_experiment(configured: Optional[str], sweep_dir: Optional[str]) -> str:
    """The configured name, else the sweep directory (one experiment per sweep), else `kdrun`."""
    return configured or sweep_dir or SINGLE_RUN_EXPERIMENT


def _connect(tracking_uri: Optional[str], save_dir: str):
    """(client, uri, artifact root of new experiments or None, a lock for the default store).
    Jobs of a sweep that start together share the SQLite file: one of them creates its tables."""
    from filelock import FileLock

    require("mlflow", "mlflow")
    from mlflow import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    artifacts, lock = None, nullcontext()
    if not uri:
        root = Path(save_dir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
        lock = FileLock(str(root / ".lock"))
    with lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy's deprecation notices from inside mlflow's store
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # opens (and on first use creates) the store now, under the lock
    return client, uri, artifacts, lock


def _experiment_id(client, name: str, artifacts: Optional[str], lock) -> str:
    with lock:
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found else client.create_experiment(name, artifact_location=artifacts)


def _metrics(values: Dict[str, float], step: int):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, step) for key, value in values.items()]


class MLflowLogger(Logger):
    def __init__(self, tracking_uri: Optional[str], save_dir: str, experiment_name: Optional[str],
                 run_name: Optional[str], log_model: bool, *, run: RunInfo):
        self.client, self.uri, artifacts, lock = _connect(tracking_uri, save_dir)
        self.run, self.log_model = run, log_model
        self.experiment = name_experiment(experiment_name, run.sweep_dir)
        experiment_id = _experiment_id(self.client, self.experiment, artifacts, lock)
        previous = run.read_state("mlflow")
        if previous.get("tracking_uri") == self.uri and previous.get("experiment") == self.experiment:
            self.run_id = previous["run_id"]  # a resumed run continues its MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"kdrun.run_dir": str(run.run_dir)}
            if run.job is not None:
                tags["kdrun.job"] = run.job
            self.run_id = self.client.create_run(experiment_id, run_name=run_name or run.name, tags=tags).info.run_id
            run.write_state("mlflow", {"tracking_uri": self.uri, "experiment": self.experiment, "run_id": self.run_id})

    def describe(self) -> str:
        return f"experiment '{self.experiment}', run {self.run_id}  (watch: mlflow ui --backend-store-uri {self.uri})"

    def log_params(self, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k[:250], str(v)[:6000]) for k, v in params.items()])

    def log_metrics(self, record: dict) -> None:
        values = {f"{record['model']}/{k}": v for k, v in numbers(record).items()}
        self.client.log_batch(self.run_id, metrics=_metrics(values, record["epoch"]))

    def log_summary(self, summary: dict) -> None:
        from kdrun import plots
        from kdrun.engine import MetricsLog

        run_dir = self.run.run_dir
        self.client.log_batch(self.run_id, metrics=_metrics(summary_metrics(summary), 0))
        hydra = run_dir / ".hydra"
        for path, folder in ((run_dir / "summary.json", None), (run_dir / "kdrun.log", None),
                             (hydra / "config.yaml", "hydra"), (hydra / "overrides.yaml", "hydra")):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), folder)
        records = MetricsLog(run_dir / "metrics.jsonl").read()
        if records:
            with tempfile.TemporaryDirectory() as tmp:
                curve = Path(tmp) / "learning_curves.png"
                plots.learning_curve(curve, records, f"{self.run.name}")
                self.client.log_artifact(self.run_id, str(curve))
        if self.log_model:
            for path in sorted((run_dir / "checkpoints").glob("*_best.pt")):
                self.client.log_artifact(self.run_id, str(path), "checkpoints")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    @staticmethod
    def log_sweep(settings: dict, sweep_dir: Path, report: dict) -> None:
        """A `sweep summary` run in the sweep's experiment: the jobs' counts, summary.csv/md and the plots."""
        client, _, artifacts, lock = _connect(settings["tracking_uri"], settings["save_dir"])
        name = name_experiment(settings["experiment_name"], str(sweep_dir))
        run_id = client.create_run(_experiment_id(client, name, artifacts, lock), run_name="sweep summary",
                                   tags={"kdrun.sweep_dir": str(sweep_dir.resolve())}).info.run_id
        client.log_batch(run_id, metrics=_metrics({k: report[k] for k in ("jobs", "ok", "failed", "missing")}, 0))
        for path in sorted(sweep_dir.iterdir()):
            if path.is_file() and path.suffix in (".csv", ".md", ".png"):
                client.log_artifact(run_id, str(path))
        if (sweep_dir / "curves").is_dir():
            client.log_artifacts(run_id, str(sweep_dir / "curves"), "curves")
        client.set_terminated(run_id, "FINISHED")
