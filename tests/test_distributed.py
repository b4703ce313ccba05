"""Several processes, one run (kdrun.distributed): torchrun and SLURM launches on the CPU, gloo, 2 processes.

Every launch costs two interpreters' imports, so one 2-process run (`ddp_run`) serves several tests: the
run directory, the teacher trained once, its cached logits, the equivalence with one process, and the
reference of the interrupted-and-resumed run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdrun.run import run
from tests.conftest import DATA_DIR, make_cfg
from tests.datasets import write_image_folder

# An MLP without dropout or batch norm, un-augmented inputs: 2 processes x 64 images and 1 x 128 see
# the same global batches (1792 = 14 x 128 training images), so they compute the same weights.
ARGS = ["dataset=fake", "dataset.download=false", "dataset.image_size=8", "dataset.shift=0", "dataset.num_train=1856",
        "dataset.val_split=64", "teacher=mlp800", "student=mlp800", "teacher.batch_size=128", "student.batch_size=128",
        "teacher.epochs=2", "epochs=12", "progress=false"]
TIMING = ("seconds", "images_per_sec")


def torchrun(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=2 -m kdrun ARGS` (a free port: tests run side by side)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdrun", *args]
    env = {**os.environ, "KDRUN_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the launch hung:\n{out}\n{err}") from None
    return proc.returncode, out, err


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict], model: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records if r["model"] == model]


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted 2-process run through the CLI, with no hydra.run.dir: both processes must find
    rank 0's timestamped run directory."""
    home = tmp_path_factory.mktemp("ddp")
    code, out, err = finish(torchrun(*ARGS, f"teacher_cache={home / 'teachers'}", cwd=home))
    assert code == 0, out + err
    runs = list((home / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 1, runs  # one run directory, not one per process
    return home, runs[0], out, err


def test_a_two_process_run_writes_the_layout_of_one_process_once(ddp_run):
    home, run_dir, out, err = ddp_run
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and ".kdrun" not in p.parts)
    assert (run_dir / ".kdrun" / "run.json").is_file()  # kdrun's own record of the run: claimed once, by rank 0
    assert files == [".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "checkpoints/student_best.pt",
                     "checkpoints/student_last.pt", "checkpoints/teacher.json", "kdrun.log", "metrics.jsonl",
                     "summary.json"]
    records = lines(run_dir)
    assert [(r["model"], r["epoch"]) for r in records] == [("teacher", 1), ("teacher", 2),
                                                           *(("student", e) for e in range(1, 13))]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["world_size"] == 2
    # Exact sums over the shards: every test image counted once.
    assert summary["student"]["test_images"] == 256 and summary["teacher"]["test_images"] == 256
    log = (run_dir / "kdrun.log").read_text()
    assert log.count("data: fake") == 1  # rank 0's log alone
    assert out.count(" s on cpu)") == 1  # one end-of-run table (its last line)
    assert "Traceback" not in err


def test_the_teacher_a_two_process_run_needs_is_trained_once_and_its_logits_gathered(ddp_run, tmp_path):
    home, run_dir, _, _ = ddp_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher"]["source"] == "trained" and summary["teacher_logits"] == "cached"
    (folder,) = [p for p in (home / "teachers").iterdir() if p.is_dir()]
    assert [r["epoch"] for r in lines(folder)] == [1, 2]
    # The logits the two processes computed on their shards and gathered are those one process computes.
    from kdrun.data import build_data
    from kdrun.models import build_from_config
    from kdrun.teachers import cached_train_logits

    cfg = make_cfg(*ARGS)
    data = build_data(cfg.dataset, cfg.data_dir, torch.device("cpu"))
    teacher = build_from_config(cfg.teacher, data)
    teacher.load_state_dict(weights(folder / "teacher.pt"))
    gathered = torch.load(folder / "train_logits.pt", weights_only=True)["logits"]
    alone = cached_train_logits(teacher, data, torch.device("cpu"), tmp_path, "x")
    assert gathered.shape == alone.shape == (1792, 10)
    torch.testing.assert_close(gathered, alone, rtol=1e-5, atol=1e-5)


def test_two_processes_of_64_train_the_weights_of_one_process_of_128(ddp_run, tmp_path):
    home, run_dir, _, _ = ddp_run
    alone = run(make_cfg(*ARGS, tmp=tmp_path), tmp_path / "alone")
    (folder,) = [p for p in (tmp_path / "teachers").iterdir() if p.is_dir()]
    (ddp_folder,) = [p for p in (home / "teachers").iterdir() if p.is_dir()]
    for mine, theirs in ((ddp_folder / "teacher.pt", folder / "teacher.pt"),
                         (run_dir / "checkpoints" / "student_last.pt",
                          tmp_path / "alone" / "checkpoints" / "student_last.pt")):
        a, b = weights(mine), weights(theirs)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{mine.name}: {key}")
    ddp = json.loads((run_dir / "summary.json").read_text())
    assert ddp["student"]["test_errors"] == alone["student"]["test_errors"]


def test_sigterm_to_torchrun_then_resume_matches_an_uninterrupted_run(ddp_run, tmp_path):
    home, reference, _, _ = ddp_run
    cut = tmp_path / "cut"
    args = [*ARGS, f"teacher_cache={home / 'teachers'}", f"hydra.run.dir={cut}"]  # the cached teacher
    proc = torchrun(*args, cwd=tmp_path)
    last = cut / "checkpoints" / "student_last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to the launcher, which passes it to every process
    code, _, err = finish(proc)
    assert code != 0 and err.count("kdrun: interrupted") == 2, err
    saved = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= saved < 12 and not (cut / "summary.json").exists()
    assert [r["epoch"] for r in lines(cut) if r["model"] == "student"] == list(range(1, saved + 1))
    shutil.copytree(cut, tmp_path / "alone")

    code, out, err = finish(torchrun(*args, "resume=true", cwd=tmp_path))
    assert code == 0, out + err
    assert without_timing(lines(cut), "student") == without_timing(lines(reference), "student")
    resumed, full = (json.loads((d / "summary.json").read_text())["student"] for d in (cut, reference))
    assert resumed["test_errors"] == full["test_errors"] and resumed["best_val_acc"] == full["best_val_acc"]

    # The same interrupted run resumed by one process: the epoch boundary is the same, the rest agrees
    # to float tolerance (one process sums in another order).
    run(make_cfg(*args[:-1], "resume=true"), tmp_path / "alone")
    one, two = without_timing(lines(tmp_path / "alone"), "student"), without_timing(lines(reference), "student")
    assert [r["epoch"] for r in one] == list(range(1, 13)) and one[:saved] == two[:saved]
    assert [r["val/loss"] for r in one] == pytest.approx([r["val/loss"] for r in two], rel=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failure_on_one_process_of_an_srun_launch_ends_them_all_with_its_line(tmp_path):
    """Two processes with SLURM's environment (`srun -n 2 python -m kdrun`) train a teacher on an image
    folder (DistributedSampler), then the second one fails alone: its student layer does not exist."""
    write_image_folder(tmp_path / "tree", size=8)  # 24 images: 19 train, 5 test
    port = _free_port()
    procs = []
    for rank, layer in enumerate(("fc1", "fc9")):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "KD_LAYER": layer, "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2",
               "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
               "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": str(port)}
        cmd = [sys.executable, "-m", "kdrun", "dataset=image_folder", f"dataset.root={tmp_path / 'tree'}",
               "dataset.image_size=8", "dataset.val_split=0", "dataset.num_workers=0", "teacher=mlp800",
               "student=mlp800", "teacher.epochs=1", "kd=fitnet", "kd.fitnet.student_layers=[${oc.env:KD_LAYER}]",
               "kd.fitnet.teacher_layers=[fc1]", "progress=false", "dist_timeout_s=60",
               f"teacher_cache={tmp_path / 'teachers'}", f"hydra.run.dir={tmp_path / 'run'}"]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = [finish(p, timeout=120) for p in procs]
    for code, out, err in results:
        last = err.strip().splitlines()[-1]
        assert code != 0 and "Traceback" not in err, err
        assert last.startswith("kdrun: error: ") and "student layer 'fc9' is not a module path" in last, err
    assert "process 1: " in results[0][2]  # rank 0 names the process that failed
    # The layer paths are checked on the untrained models, before the teacher trains: none was.
    assert not list((tmp_path / "teachers").glob("*/meta.json"))


@pytest.mark.slow
def test_every_scheme_and_the_methods_that_train_parts_of_their_own_run_under_torchrun(tmp_path):
    from tests.ddp_schemes import CASES

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).parent / "ddp_schemes.py"), str(tmp_path)]
    env = {**os.environ, "KDRUN_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in CASES:
        assert json.loads((tmp_path / name / "summary.json").read_text())["status"] == "ok", name
        keys = [(r["model"], r["epoch"]) for r in lines(tmp_path / name)]
        assert len(keys) == len(set(keys)) and keys, name  # every line written once
    # The hint stage leaves the student's classifier without gradients (it stays as initialised), as in
    # one process; the rest agrees to float tolerance (the hint's weight, 100, amplifies rounding).
    alone = tmp_path / "alone"
    run(make_cfg(*CASES["fitnet_mlp"], "progress=false", tmp=alone), alone / "run")
    for stage in ("student.fitnet_last.pt", "student_last.pt"):
        a, b = weights(tmp_path / "fitnet_mlp" / "checkpoints" / stage), weights(alone / "run" / "checkpoints" / stage)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=f"{stage}: {key}")
    stage = weights(tmp_path / "fitnet_mlp" / "checkpoints" / "student.fitnet_last.pt")
    alone_stage = weights(alone / "run" / "checkpoints" / "student.fitnet_last.pt")
    assert torch.equal(stage["fc3.weight"], alone_stage["fc3.weight"])


@pytest.mark.slow
def test_crd_and_sync_bn_on_the_cpu_are_refused_with_several_processes_before_any_training(tmp_path):
    """kd=crd (memory banks each process would update on its own) and sync_bn=true on the CPU
    (SyncBatchNorm is CUDA only) under torchrun: one line from each process, a failed summary.json,
    and no teacher trained. The two launches run side by side."""
    small = ["dataset=fake", "dataset.image_size=8", "dataset.num_train=128", "dataset.num_test=32", "teacher=mlp800",
             "student=mlp800", "teacher.batch_size=32", "student.batch_size=32", "teacher.epochs=1", "epochs=1",
             "progress=false", "deploy_report=false", f"teacher_cache={tmp_path / 'teachers'}"]
    refusals = {"crd": (["kd=crd"], "kd.crd keeps memory banks that several processes (torchrun, SLURM) do not share "
                                    "yet: run it on one device (or choose another method)"),
                "bn": (["kd=hinton", "sync_bn=true"], "sync_bn=true: SyncBatchNorm runs on CUDA devices only; use "
                                                       "sync_bn=false on the CPU")}
    procs = {name: torchrun(*small, *extra, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
             for name, (extra, _) in refusals.items()}
    for name, proc in procs.items():
        code, out, err = finish(proc)
        message = refusals[name][1]
        assert code != 0, out + err
        assert [line for line in err.splitlines() if line.startswith("kdrun: ")] == [f"kdrun: error: {message}"] * 2, err
        # the one traceback is torchrun's own report that a process failed
        assert err.count("Traceback") == 1 and "ChildFailedError" in err, err
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["status"] == "failed" and summary["error"] == message
        assert not (tmp_path / name / "metrics.jsonl").exists()
    assert not list((tmp_path / "teachers").glob("*/meta.json"))  # refused before the teacher trained


def test_a_training_pass_draws_a_seed_every_process_shares_also_without_a_reseed():
    """The engine seeds each epoch alike on every process; a loader passed over again without a reseed
    (FT's paraphraser epochs) must still give every process the same pass seed, derived from the last."""
    from kdrun import distributed
    from kdrun.engine import reseed

    reseed(0, "student", 1)
    first = distributed._new_pass()
    distributed._own_random_stream(first[1])  # what a pass does next: this process's own stream
    second = distributed._new_pass()
    assert first[0] == 0 and second[0] == 1 and second[1] != first[1]
    reseed(0, "student", 1)  # the same epoch again (a resume): the same seeds
    assert distributed._new_pass() == first
