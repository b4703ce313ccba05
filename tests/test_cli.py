"""The command as a user runs it: run directories, multirun, the teacher cache, --cfg job."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, kdrun_cli, needs_mnist

SMALL = [*TINY, "dataset.train_subset=2000"]


def _read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@needs_mnist
def test_default_run_on_a_2000_image_mnist_subset_writes_every_file(tmp_path):
    run_dir = tmp_path / "run"
    proc = kdrun_cli(*SMALL, "teacher.epochs=2", "epochs=2", f"hydra.run.dir={run_dir}",
                     f"teacher_cache={tmp_path / 'teachers'}", cwd=tmp_path)
    # Hydra's record of the composed config and overrides
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["student"]["name"] == "mlp800"
    assert "epochs=2" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    # metrics.jsonl: one line per epoch per model trained, with every loss term
    lines = _read_metrics(run_dir)
    assert [(r["model"], r["epoch"]) for r in lines] == [("teacher", 1), ("teacher", 2), ("student", 1), ("student", 2)]
    student = lines[-1]
    for key in ("train/loss", "train/loss_ce", "train/loss_hinton", "train/acc", "val/acc", "lr", "seconds",
                "images_per_sec"):
        assert key in student, key
    assert student["train/loss"] == pytest.approx(student["train/loss_ce"] + student["train/loss_hinton"], rel=1e-5)
    # summary.json
    summary = json.loads((run_dir / "summary.json").read_text())
    for role in ("teacher", "student"):
        info = summary[role]
        assert info["test_images"] == 10000 and info["test_errors"] == round(10000 * (1 - info["test_acc"]))
        assert info["params"] > 0 and info["best_val_epoch"] in (1, 2)
    assert summary["teacher"]["params"] == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    assert summary["student"]["params"] == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    assert summary["student"]["test_acc"] > 0.5  # it learned something in 2 short epochs
    for key in ("wall_time_s", "seed", "device", "versions", "git_commit"):
        assert key in summary
    assert summary["device"] == "cpu" and summary["lambda"] == pytest.approx(0.1)
    # checkpoints: the student's last and best weights, and where the teacher came from
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"student_last.pt", "student_best.pt", "teacher.json"}
    assert json.loads((run_dir / "checkpoints" / "teacher.json").read_text())["source"] == "trained"
    # a log file, and the closing table on stdout
    assert "teacher mlp1200: training it into the cache" in (run_dir / "kdrun.log").read_text()
    assert "student" in proc.stdout and str(run_dir) in proc.stdout.replace("\n", "")


@needs_mnist
def test_multirun_2x2_trains_the_teacher_exactly_once(tmp_path):
    sweep = tmp_path / "sweep"
    kdrun_cli("-m", *TINY, "dataset.train_subset=600", "T=1,2", "alpha=0.1,0.5", f"hydra.sweep.dir={sweep}",
              f"teacher_cache={tmp_path / 'teachers'}", cwd=tmp_path)
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(4)]
    assert sorted((s["T"], s["alpha"]) for s in summaries) == [(1, 0.1), (1, 0.5), (2, 0.1), (2, 0.5)]
    sources = [s["teacher"]["source"] for s in summaries]
    assert sources.count("trained") == 1 and sources.count("cache") == 3
    assert len({s["teacher"]["digest"] for s in summaries}) == 1
    teacher_lines = [r for i in range(4) for r in _read_metrics(sweep / str(i)) if r["model"] == "teacher"]
    assert len(teacher_lines) == 1  # teacher.epochs=1, trained in one job only
    for i in range(4):
        assert (sweep / str(i) / "checkpoints" / "student_best.pt").is_file()


@needs_mnist
@pytest.mark.slow  # `make test-slow` runs it; the joblib launcher's test (two jobs, one teacher) stays in `make test`
def test_jobs_starting_together_share_one_teacher(tmp_path):
    """Two processes racing for the same teacher: the file lock lets exactly one train it."""
    import os

    from tests.conftest import DATA_DIR

    env = {**os.environ, "KDRUN_DATA_DIR": str(DATA_DIR)}
    procs = [subprocess.Popen([sys.executable, "-m", "kdrun", *TINY, "dataset.train_subset=3000", "teacher.epochs=2",
                               f"hydra.run.dir={tmp_path / f'run{i}'}", f"teacher_cache={tmp_path / 'teachers'}"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    sources = sorted(json.loads((tmp_path / f"run{i}" / "summary.json").read_text())["teacher"]["source"]
                     for i in range(2))
    assert sources == ["cache", "trained"]


def test_cfg_job_prints_the_config_without_training(tmp_path):
    proc = kdrun_cli("teacher=resnet50", "student=mobilenetv2", "T=4", "--cfg", "job", cwd=tmp_path)
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["teacher"]["name"] == "resnet50" and cfg["student"]["name"] == "mobilenet_v2" and cfg["T"] == 4
    assert not (tmp_path / "outputs").exists()


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "kdrun"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "teacher: " in proc.stdout


def test_make_help_lists_every_documented_target():
    """`make help` is how the README points users to the targets: each `target: ... ## text` shows."""
    import re

    from tests.conftest import ROOT

    documented = re.findall(r"^([^\s:#]+):[^\n]*?## ", (ROOT / "Makefile").read_text(), flags=re.M)
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60).stdout
    listed = re.findall(r"^\s+(?:\x1b\[\d+m)?(\S+?)(?:\x1b\[0m)?\s", out, flags=re.M)
    assert "reproduce-cifar100" in documented and listed == documented
