"""Watching a run: the epoch line, a kdrun.log that tells the whole story, and the trackers (TensorBoard,
MLflow, CSV, W&B) read back with their own readers. One real 2-job sweep is shared by most tests."""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock
from hydra.utils import get_class

from kdrun import KdrunError
from kdrun.loggers.console import EpochLog, chance_level, epoch_line, runaway
from kdrun.run import run
from tests.conftest import CONFIGS, TINY, kdrun_cli, make_cfg

FAKE = ["dataset=fake", "dataset.num_train=300", "teacher=mlp800"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- the epoch line and the warnings, as pure functions ------------------------------------------

def test_epoch_line_reads_like_a_training_log():
    record = {"model": "student", "epoch": 3, "lr": 0.0412, "train/loss": 0.41234, "train/loss_ce": 0.1234,
              "train/loss_hinton": 0.28894, "train/acc": 0.91234, "seconds": 2.13, "images_per_sec": 28512.4,
              "val/acc": 0.921, "val/loss": 0.23456}
    assert epoch_line(record, 20, (3, 0.921)) == (
        "student   3/20  loss 0.4123 (ce 0.1234, hinton 0.2889)  acc 91.23%  val 92.10% (best 92.10% @3)  "
        "val loss 0.2346  lr 0.0412  2.1 s  28,512 img/s")
    # No validation split, and a key it does not know (shown, not dropped)
    assert epoch_line({"model": "peer1", "epoch": 1, "train/loss": 2.0, "val/acc5": 0.5}, 9) == \
        "peer1    1/9  loss 2  val/acc5 0.5"


def test_a_runaway_loss_is_named_once_per_model(caplog):
    first = {"train/loss": 2.3, "val/loss": 2.3}
    assert runaway({"train/loss": 2.0, "val/loss": 22.0}, first) == {}
    assert runaway({"train/loss": 2.0, "val/loss": 1.5e16}, first) == {"val/loss": (1.5e16, 2.3)}
    assert set(runaway({"train/loss": float("inf"), "val/loss": 2.0}, first)) == {"train/loss"}

    epoch_log = EpochLog(3)
    with caplog.at_level(logging.INFO, logger="kdrun"):
        for epoch, val_loss in ((1, 2.3), (2, 1.5e16), (3, 3e16)):
            epoch_log({"model": "student", "epoch": epoch, "train/loss": 2.0, "val/loss": val_loss})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "student: val/loss is 1.5e+16 at epoch 2" in warnings[0]
    assert sum("student  " in r.getMessage() for r in caplog.records) == 3  # the epoch lines


def test_chance_level_accuracy_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="kdrun"):
        assert chance_level("the teacher", 0.0974, 10)
        assert not chance_level("the teacher", 0.45, 10) and not chance_level("x", None, 10)
    assert [r.getMessage()[:53] for r in caplog.records] == ["the teacher ends at chance level: 9.74% test accuracy"]


# --- the logger config group ----------------------------------------------------------------------

def test_every_logger_option_composes_and_names_its_class(tmp_path):
    options = sorted(p.stem for p in (CONFIGS / "logger").glob("*.yaml"))
    assert options == ["csv", "mlflow", "none", "tensorboard", "wandb"]
    assert all(node is None for node in make_cfg().logger.values())  # logger=none is the default
    for option in options[:1] + options[2:] + ["[tensorboard,mlflow,csv]"]:
        selected = {k: v for k, v in make_cfg(f"logger={option}").logger.items() if v is not None}
        assert list(selected) == ([] if option == "none" else option.strip("[]").split(","))
        for name, node in selected.items():
            assert get_class(node._target_).__module__ == f"kdrun.loggers.{name}"
    with pytest.raises(KdrunError, match="logger.wandb.mode=upload: choose one of online, offline, disabled"):
        run(make_cfg("logger=wandb", "logger.wandb.mode=upload"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if `pip install 'kdrun[mlflow]'` had not been run
    with pytest.raises(KdrunError) as e:
        run(make_cfg(*FAKE, "logger=mlflow", tmp=tmp_path), tmp_path / "r")
    assert str(e.value) == ("logger=mlflow needs the mlflow package, which is not installed: "
                            "pip install 'kdrun[mlflow]' (or choose another logger)")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # before any training


# --- a real sweep: 2 jobs, TensorBoard + MLflow + CSV ---------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Run once per test session, also under pytest-xdist: the workers share a folder and a lock."""
    pytest.importorskip("mlflow", reason="pip install 'kdrun[mlflow]' (make install does)")
    pytest.importorskip("tensorboard", reason="pip install 'kdrun[tensorboard]' (make install does)")
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    tmp = root / "watched"
    with FileLock(str(root / "watched.lock")):
        if not (tmp / "done").exists():
            tmp.mkdir(exist_ok=True)
            kdrun_cli("-m", *TINY, *FAKE, "teacher.epochs=2", "epochs=2", "T=2,8", "logger=[tensorboard,mlflow,csv]",
                      f"logger.mlflow.save_dir={tmp / 'mlruns'}", f"hydra.sweep.dir={tmp / 'sweep'}",
                      f"teacher_cache={tmp / 'teachers'}", cwd=tmp)
            (tmp / "done").touch()
    return {"dir": tmp / "sweep", "mlruns": tmp / "mlruns"}


def test_kdrun_log_has_every_epoch_of_every_model_and_the_results(sweep):
    for job in ("0", "1"):
        run_dir = sweep["dir"] / job
        text = (run_dir / "kdrun.log").read_text()
        records = _records(run_dir)
        assert [(r["model"], r["epoch"]) for r in records] == \
            ([("teacher", 1), ("teacher", 2)] if job == "0" else []) + [("student", 1), ("student", 2)]
        for r in records:  # the line of every epoch, with its numbers
            line = re.search(rf"\] - {r['model']} +{r['epoch']}/2  loss (\S+) .* val ([\d.]+)% ", text)
            assert line, (r["model"], r["epoch"])
            assert float(line[1]) == pytest.approx(r["train/loss"], rel=1e-3)
            assert line[2] == f"{100 * r['val/acc']:.2f}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert f"run directory: {run_dir}\n" in text and "device: cpu" in text
        assert "teacher mlp800 -> student mlp800 (2 epochs), kd=hinton, T=" in text
        source = "trained into the cache" if job == "0" else "from the cache"
        assert f"teacher mlp800: {source} ({summary['teacher']['path'].rsplit('/', 1)[0]})" in text
        # the results table, as on the terminal
        assert re.search(rf"student +│ mlp800 +│ +[\d,]+ │ +{100 * summary['student']['test_acc']:.2f}% ", text)
        assert "logger mlflow: experiment " in text and "(watch: mlflow ui --backend-store-uri sqlite:///" in text


def test_tensorboard_has_a_folder_per_job_with_scalars_and_hparams(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for job, T in (("0", 2.0), ("1", 8.0)):
        events = EventAccumulator(str(sweep["dir"] / job / "tensorboard"))
        events.Reload()
        for r in _records(sweep["dir"] / job):
            for key in ("train/loss", "train/acc", "val/acc", "lr"):
                [scalar] = [s for s in events.Scalars(f"{r['model']}/{key}") if s.step == r["epoch"]]
                assert scalar.value == pytest.approx(r[key], rel=1e-6)
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = start.session_start_info.hparams
        assert hparams["T"].number_value == T and hparams["student.name"].string_value == "mlp800"
        assert hparams["overrides"].string_value.endswith(f"T={T:g}")
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert "student/test_acc" in [m.name.tag for m in experiment.metric_infos]
        summary = json.loads((sweep["dir"] / job / "summary.json").read_text())
        assert events.Scalars("student/test_acc")[0].value == pytest.approx(summary["student"]["test_acc"])


def test_mlflow_holds_the_sweep_as_one_experiment(sweep):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep['mlruns'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(str(sweep["dir"]))  # named after the sweep
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"0: T=2", "1: T=8", "sweep summary"}
    for job, T in (("0", "2"), ("1", "8")):  # run names: the swept key
        mlrun = runs[f"{job}: T={T}"]
        assert mlrun.info.status == "FINISHED" and mlrun.data.params["T"] == f"{T}.0"
        assert mlrun.data.params["student.name"] == "mlp800" and "progress" not in mlrun.data.params
        assert mlrun.data.params["overrides"].endswith(f"teacher=mlp800 T={T}")  # as typed, without logger=...
        assert "logger" not in mlrun.data.params["overrides"] and "hydra" not in mlrun.data.params["overrides"]
        for model in {r["model"] for r in _records(sweep["dir"] / job)}:
            history = client.get_metric_history(mlrun.info.run_id, f"{model}/val/acc")
            assert [(m.step, m.value) for m in history] == \
                [(r["epoch"], pytest.approx(r["val/acc"])) for r in _records(sweep["dir"] / job) if r["model"] == model]
        summary = json.loads((sweep["dir"] / job / "summary.json").read_text())
        assert mlrun.data.metrics["student/test_acc"] == pytest.approx(summary["student"]["test_acc"])
        assert mlrun.data.metrics["wall_time_s"] == pytest.approx(summary["wall_time_s"])
        artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
        assert {"summary.json", "kdrun.log", "learning_curves.png", "hydra"} <= artifacts
        local = Path(client.download_artifacts(mlrun.info.run_id, "summary.json", str(sweep["dir"] / job / "dl")))
        assert json.loads(local.read_text()) == summary
    swept = runs["sweep summary"]
    assert swept.data.metrics["ok"] == 2 and swept.data.metrics["failed"] == 0
    files = {a.path for a in client.list_artifacts(swept.info.run_id)}
    assert {"summary.csv", "summary.md", "lineplot.png", "curves"} <= files


def test_csv_logger_writes_metrics_csv_with_every_line(sweep):
    with (sweep["dir"] / "0" / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    records = _records(sweep["dir"] / "0")
    assert [(r["model"], int(r["epoch"])) for r in rows] == [(r["model"], r["epoch"]) for r in records]
    assert float(rows[-1]["train/loss_hinton"]) == pytest.approx(records[-1]["train/loss_hinton"])
    assert rows[0]["train/loss_hinton"] == ""  # the teacher has no KD term


# --- failures ---------------------------------------------------------------------------------------

def test_a_tracker_failing_mid_run_warns_and_the_others_follow_the_run_through_a_resume(tmp_path, monkeypatch, caplog,
                                                                                     sweep):
    """The CSV logger's file cannot be written (a folder stands in its way): one warning, and the run,
    MLflow and TensorBoard go on. Interrupted, the run is KILLED in MLflow; resumed, it continues
    the same MLflow run and TensorBoard folder, each epoch logged once."""
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kdrun import Interrupted
    from tests.test_resume import stop_in_epoch

    run_dir = tmp_path / "r"
    (run_dir / "csv" / "metrics.csv").mkdir(parents=True)
    # The sweep's MLflow store (its experiment is the sweep's): this run goes to the experiment "kdrun"
    args = [*FAKE, "epochs=3", "logger=[csv,tensorboard,mlflow]", f"logger.mlflow.save_dir={sweep['mlruns']}"]
    with caplog.at_level(logging.WARNING), stop_in_epoch(4, monkeypatch), pytest.raises(Interrupted):
        run(make_cfg(*args, tmp=tmp_path), run_dir)  # stops in the student's 3rd epoch (the teacher had one)
    failures = [r.getMessage() for r in caplog.records if "logger=" in r.getMessage()]
    assert len(failures) == 1 and failures[0].startswith("logger=csv failed (IsADirectoryError")
    assert (run_dir / "csv" / "hparams.yaml").is_file()  # it did start: it failed with the first metrics line
    client = MlflowClient(f"sqlite:///{sweep['mlruns'] / 'mlflow.db'}")
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"

    summary = run(make_cfg(*args, "resume=true", tmp=tmp_path), run_dir)
    assert summary["status"] == "ok" and json.loads((run_dir / "summary.json").read_text())["status"] == "ok"
    assert [(r["model"], r["epoch"]) for r in _records(run_dir)] == [("teacher", 1), ("student", 1), ("student", 2),
                                                                      ("student", 3)]
    [mlrun] = client.search_runs([client.get_experiment_by_name("kdrun").experiment_id])
    assert mlrun.info.run_id == run_id and mlrun.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "student/val/acc")] == [1, 2, 3]
    assert mlrun.data.metrics["student/test_acc"] == pytest.approx(summary["student"]["test_acc"])
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("student/val/acc")] == [1, 2, 3]
    assert events.Scalars("student/test_acc")[0].value == pytest.approx(summary["student"]["test_acc"])


# --- Weights & Biases: offline unless logged in ---------------------------------------------------

def test_wandb_runs_offline_unless_logged_in(tmp_path, monkeypatch, caplog):
    pytest.importorskip("wandb", reason="pip install 'kdrun[wandb]' (make install does)")
    from kdrun.loggers.wandb import logged_in

    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: never logged in
    assert not logged_in()
    run_dir = tmp_path / "r"
    with caplog.at_level(logging.WARNING):
        summary = run(make_cfg(*FAKE, "epochs=2", "logger=wandb", tmp=tmp_path), run_dir)
    assert not [r.getMessage() for r in caplog.records if "logger=" in r.getMessage()]
    # W&B keeps an offline run in the run directory, for `wandb sync`; its records hold every metric by name
    [log_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert log_file.name == f"run-{json.loads((run_dir / 'trackers.json').read_text())['wandb']['id']}.wandb"
    keys = (b"student/val/acc", b"student/epoch", b"teacher/train/loss", b"student/test_acc", b"teacher.lr")
    deadline = time.time() + 30  # wandb-core, its own process, may still be writing when finish() returns
    while not all(k in log_file.read_bytes() for k in keys) and time.time() < deadline:
        time.sleep(0.1)
    records = log_file.read_bytes()
    for key in keys:
        assert key in records, key
    assert summary["status"] == "ok"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert logged_in()  # what `wandb login` leaves behind: then runs go online


# --- the trackers' own keys, one run through the CLI ------------------------------------------------

def test_tracker_folders_experiment_name_and_log_model_of_a_single_run(tmp_path, monkeypatch, sweep):
    """logger.csv.dir, logger.tensorboard.dir, logger.mlflow.experiment_name and log_model=true on one
    run; its MLflow run is named by its overrides (those that say what it computes). In the sweep's
    MLflow store: a new store's tables take seconds to create."""
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.test_records import BASE, kdrun_in_process

    run_dir = tmp_path / "r"
    kdrun_in_process(monkeypatch, *BASE, "logger=[csv,tensorboard,mlflow]", "logger.csv.dir=tables",
                     "logger.tensorboard.dir=events", "logger.mlflow.experiment_name=promised",
                     "logger.mlflow.log_model=true", f"logger.mlflow.save_dir={sweep['mlruns']}",
                     f"hydra.run.dir={run_dir}", f"teacher_cache={tmp_path / 'teachers'}")
    records = _records(run_dir)
    assert [(r["model"], r["epoch"]) for r in records] == [("student", 1)]
    assert not (run_dir / "csv").exists() and not (run_dir / "tensorboard").exists()
    with (run_dir / "tables" / "metrics.csv").open(newline="") as f:
        [row] = list(csv.DictReader(f))
    assert float(row["val/acc"]) == pytest.approx(records[0]["val/acc"])
    assert (run_dir / "tables" / "hparams.yaml").is_file()
    events = EventAccumulator(str(run_dir / "events"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("student/val/acc")] == [(1, pytest.approx(records[0]["val/acc"]))]

    client = MlflowClient(f"sqlite:///{sweep['mlruns'] / 'mlflow.db'}")
    [mlrun] = client.search_runs([client.get_experiment_by_name("promised").experiment_id])
    # TINY's settings and BASE, as typed; not progress, deploy_report, logger.*, hydra.* or teacher_cache
    assert mlrun.info.run_name == ("dataset.download=false teacher.epochs=1 epochs=1 teacher.batch_size=64 "
                                   "student.batch_size=64 " + " ".join(BASE))
    assert [a.path for a in client.list_artifacts(mlrun.info.run_id, "checkpoints")] == ["checkpoints/student_best.pt"]
    uploaded = client.download_artifacts(mlrun.info.run_id, "checkpoints/student_best.pt", str(tmp_path))
    assert Path(uploaded).read_bytes() == (run_dir / "checkpoints" / "student_best.pt").read_bytes()


def test_a_tracker_added_on_resume_sees_the_epochs_from_there_on(tmp_path, monkeypatch):
    from kdrun import Interrupted
    from tests.test_records import BASE
    from tests.test_resume import stop_in_epoch

    run_dir, args = tmp_path / "r", [*BASE, "epochs=3"]
    with stop_in_epoch(2, monkeypatch), pytest.raises(Interrupted):
        run(make_cfg(*args, tmp=tmp_path), run_dir)
    assert not (run_dir / "csv").exists()
    summary = run(make_cfg(*args, "logger=csv", "resume=true", tmp=tmp_path), run_dir)
    assert summary["status"] == "ok"
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    records = _records(run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [(r["model"], int(r["epoch"])) for r in rows] == [("student", 2), ("student", 3)]
    assert [float(r["train/loss"]) for r in rows] == pytest.approx([r["train/loss"] for r in records[1:]])
