"""Interrupting a run and resuming it gives the same result as never stopping."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdrun import Interrupted, KdrunError
from kdrun.run import run
from tests.conftest import DATA_DIR, TINY, kdrun_cli, make_cfg, needs_mnist

ARGS = ["dataset=fake", "dataset.num_train=400", "teacher=mlp800", "epochs=4"]


def _student_lines(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Timings differ between runs; everything else must not.
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_sec")} for r in lines if r["model"] == "student"]


@contextlib.contextmanager
def stop_in_epoch(n: int, monkeypatch):
    """Makes the n-th trained epoch of the process stop at its first step, as a signal would."""
    import kdrun.engine as engine

    original, calls = engine.train_one_epoch, {"n": 0}

    def stopping(model, loader, optimizer, device, desc, progress=True, should_stop=lambda: False, step=None):
        calls["n"] += 1
        return original(model, loader, optimizer, device, desc, progress, should_stop=lambda: calls["n"] == n,
                        step=step)

    monkeypatch.setattr(engine, "train_one_epoch", stopping)
    try:
        yield
    finally:
        monkeypatch.setattr(engine, "train_one_epoch", original)


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    full = run(make_cfg(*ARGS, tmp=tmp_path), tmp_path / "full")

    # Interrupt the second run in its third epoch, as a signal would.
    with stop_in_epoch(3, monkeypatch), pytest.raises(Interrupted):
        run(make_cfg(*ARGS, tmp=tmp_path), tmp_path / "cut")
    assert torch.load(tmp_path / "cut" / "checkpoints" / "student_last.pt", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "cut" / "summary.json").exists()

    resumed = run(make_cfg(*ARGS, "resume=true", tmp=tmp_path), tmp_path / "cut")
    assert _student_lines(tmp_path / "cut") == _student_lines(tmp_path / "full")
    for key in ("test_acc", "test_errors", "best_val_epoch", "best_val_acc"):
        assert resumed["student"][key] == full["student"][key]


def test_resume_refuses_another_config(tmp_path):
    run(make_cfg(*ARGS, "epochs=1", tmp=tmp_path), tmp_path / "r")
    (tmp_path / "r" / "summary.json").unlink()  # pretend it was interrupted
    with pytest.raises(KdrunError, match="resume=true: .*another config"):
        run(make_cfg(*ARGS, "epochs=1", "T=8", "resume=true", tmp=tmp_path), tmp_path / "r")


def test_resume_of_a_complete_run_returns_its_summary(tmp_path):
    first = run(make_cfg(*ARGS, "epochs=1", tmp=tmp_path), tmp_path / "r")
    again = run(make_cfg(*ARGS, "epochs=1", "resume=true", tmp=tmp_path), tmp_path / "r")
    assert again == first


@needs_mnist
def test_sigint_saves_the_last_epoch_and_resume_finishes_identically(tmp_path):
    args = [*TINY, "dataset.train_subset=3000", "teacher=mlp800", "epochs=12", f"teacher_cache={tmp_path / 't'}"]
    kdrun_cli(*args, f"hydra.run.dir={tmp_path / 'full'}", cwd=tmp_path)

    cut = tmp_path / "cut"
    env = {**os.environ, "KDRUN_DATA_DIR": str(DATA_DIR)}
    proc = subprocess.Popen([sys.executable, "-m", "kdrun", *args, f"hydra.run.dir={cut}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (cut / "checkpoints" / "student_last.pt").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted" in err and "Traceback" not in err
    saved = torch.load(cut / "checkpoints" / "student_last.pt", weights_only=True)["epoch"]
    assert 1 <= saved < 12 and not (cut / "summary.json").exists()

    # The message gives the command that continues this run, with its real directory: run it.
    command = re.search(r"Continue with:\n  (.+)", err)[1]
    assert command == " ".join(["python -m kdrun", *args, "resume=true", f"hydra.run.dir={cut}"])
    kdrun_cli(*shlex.split(command)[3:], cwd=tmp_path)
    assert _student_lines(cut) == _student_lines(tmp_path / "full")
    full, resumed = (json.loads((d / "summary.json").read_text())["student"] for d in (tmp_path / "full", cut))
    assert resumed["test_errors"] == full["test_errors"]


def test_an_interrupted_teacher_resumes_in_the_cache(tmp_path, monkeypatch):
    args = [*ARGS, "teacher.epochs=3"]
    reference = run(make_cfg(*args, "teacher_cache=" + str(tmp_path / "ref")), tmp_path / "ref_run")

    with stop_in_epoch(2, monkeypatch), pytest.raises(Interrupted):  # the teacher's second epoch
        run(make_cfg(*args, tmp=tmp_path), tmp_path / "a")

    summary = run(make_cfg(*args, tmp=tmp_path), tmp_path / "b")
    assert summary["teacher"]["source"] == "trained"
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["model"] == "teacher"] == [1, 2, 3]
    assert summary["teacher"]["test_errors"] == reference["teacher"]["test_errors"]


def test_resume_runs_a_failed_job_again(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": "out of memory"}))
    summary = run(make_cfg(*ARGS, "epochs=1", "resume=true", tmp=tmp_path), run_dir)
    assert summary["status"] == "ok" and summary["student"]["test_images"] == 256
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"


def test_resume_refuses_a_complete_run_of_another_config(tmp_path):
    """A resumed sweep finds its jobs by number: a changed grid must not return another job's results."""
    run(make_cfg(*ARGS, "epochs=1", tmp=tmp_path), tmp_path / "r")
    with pytest.raises(KdrunError, match="resume=true: .*complete run of another config"):
        run(make_cfg(*ARGS, "epochs=1", "T=8", "resume=true", tmp=tmp_path), tmp_path / "r")
