"""Records you can trust: a run never shares its directory, a refused resume changes nothing, the
metrics agree with the checkpoints, the caches know their data, and ordinary faults end in one line."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdrun import Interrupted, KdrunError
from kdrun.run import run
from tests.conftest import DATA_DIR, TINY, kdrun_cli, make_cfg
from tests.test_resume import stop_in_epoch

# A student from labels alone on a little fake data: a fraction of a second per run.
BASE = ["dataset=fake", "dataset.num_train=160", "dataset.num_test=64", "kd=none", "student.batch_size=32"]
WITH_TEACHER = [*BASE, "kd=hinton", "teacher=mlp800", "teacher.batch_size=32"]


def _files(folder: Path) -> dict:
    """Every file under `folder` (but locks), with its bytes: what a refused run must leave alone."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith("lock")}


def _epochs(run_dir: Path, model: str = "student") -> list[int]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in lines if r["model"] == model]


# --- 1. one directory per run ------------------------------------------------------------------------

def test_a_new_run_never_writes_into_a_folder_holding_another_run(tmp_path):
    run(make_cfg(*BASE, tmp=tmp_path), tmp_path / "r")
    before = _files(tmp_path / "r")
    with pytest.raises(KdrunError, match=r"holds a run already: continue it with resume=true"):
        run(make_cfg(*BASE, "seed=1", tmp=tmp_path), tmp_path / "r")
    assert _files(tmp_path / "r") == before


def test_two_runs_started_together_get_a_directory_each_and_a_wrong_resume_changes_nothing(tmp_path):
    """Two processes given one hydra.run.dir: what two runs started in the same second get from the
    timestamped default. Then a resume of one of them with another config, through Hydra."""
    env = {**os.environ, "KDRUN_DATA_DIR": str(DATA_DIR)}
    args = [*TINY, *BASE, f"hydra.run.dir={tmp_path / 'r'}", f"teacher_cache={tmp_path / 'teachers'}"]
    procs = [subprocess.Popen([sys.executable, "-m", "kdrun", *args, f"seed={seed}"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    dirs = sorted(d for d in tmp_path.iterdir() if d.name.startswith("r"))
    assert [d.name for d in dirs] == ["r", "r_1"]
    seeds = []
    for d in dirs:  # each its own summary, metrics and Hydra record
        summary = json.loads((d / "summary.json").read_text())
        assert summary["run_dir"] == str(d) and _epochs(d) == [1]
        assert f"seed={summary['seed']}" in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        seeds.append(summary["seed"])
    assert sorted(seeds) == [0, 1]

    before = _files(dirs[0])
    proc = kdrun_cli(*args, f"seed={seeds[0]}", "student.lr=0.2", "resume=true", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"kdrun: error: resume=true: {dirs[0]} holds a complete run of another config; resume with the same "
        "overrides (and the same order of sweep values) as before, or start a new run directory")
    assert _files(dirs[0]) == before  # .hydra/ and kdrun.log included


# --- 3. a refused resume changes nothing ---------------------------------------------------------------

def test_a_refused_resume_trains_and_writes_nothing(tmp_path, monkeypatch):
    run_dir, args = tmp_path / "r", [*WITH_TEACHER, "epochs=3"]
    (run_dir / ".hydra").mkdir(parents=True)  # as Hydra writes it before every start
    (run_dir / ".hydra" / "overrides.yaml").write_text("- epochs=3\n")
    with stop_in_epoch(3, monkeypatch), pytest.raises(Interrupted):  # the teacher's epoch, then the student's 1, 2
        run(make_cfg(*args, tmp=tmp_path), run_dir)
    assert _epochs(run_dir) == [1]
    (run_dir / ".hydra" / "overrides.yaml").write_text("- epochs=3\n- teacher.epochs=2\n- resume=true\n")
    teachers = sorted(os.listdir(tmp_path / "teachers"))

    with pytest.raises(KdrunError, match=r"^resume=true: .* holds a run of another config"):
        run(make_cfg(*args, "teacher.epochs=2", "resume=true", tmp=tmp_path), run_dir)
    assert sorted(os.listdir(tmp_path / "teachers")) == teachers  # no teacher of the new recipe was trained
    assert _epochs(run_dir, "teacher") == [1] and _epochs(run_dir) == [1]
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- epochs=3\n"  # the run's own record is back

    summary = run(make_cfg(*args, "resume=true", tmp=tmp_path), run_dir)  # the right resume still works
    assert summary["status"] == "ok" and _epochs(run_dir) == [1, 2, 3]


def test_a_run_in_progress_is_not_resumed_a_second_time(tmp_path):
    from filelock import FileLock

    run(make_cfg(*BASE, tmp=tmp_path), tmp_path / "r")
    (tmp_path / "r" / "summary.json").unlink()  # as if it were still running...
    with FileLock(str(tmp_path / "r" / ".kdrun" / "lock")):  # ...in another process, which holds its lock
        with pytest.raises(KdrunError, match=r"is in use by another kdrun process"):
            run(make_cfg(*BASE, "resume=true", tmp=tmp_path), tmp_path / "r")


# --- 5. resume=true with nothing to resume --------------------------------------------------------------

def test_resume_with_nothing_to_resume_says_so_in_one_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="kdrun"):
        summary = run(make_cfg(*BASE, "resume=true", tmp=tmp_path), tmp_path / "new")
    assert summary["status"] == "ok"
    said = [r.getMessage() for r in caplog.records if "resume=true" in r.getMessage()]
    assert said == [f"resume=true: {tmp_path / 'new'} holds no run to resume; starting it from the beginning"]


# --- 4. metrics.jsonl agrees with the checkpoints -------------------------------------------------------

def _lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_sec")} for r in lines]


def test_a_full_disk_at_a_checkpoint_ends_in_one_line_and_the_resume_writes_no_duplicate(tmp_path, monkeypatch):
    import torch

    args = [*BASE, "epochs=2"]
    run(make_cfg(*args, tmp=tmp_path), tmp_path / "full")
    save = torch.save

    def full_disk(obj, f, *a, **kw):  # the first resume checkpoint goes to a device that is full
        if ".student_last.pt" in str(getattr(f, "name", f)):
            with open("/dev/full", "wb") as device:
                return save(obj, device, *a, **kw)
        return save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(KdrunError, match=r"^cannot write .*student_last.pt \(No space left on device\): free some "
                                         r"space.*resume=true"):
        run(make_cfg(*args, tmp=tmp_path), tmp_path / "cut")
    monkeypatch.setattr(torch, "save", save)
    run(make_cfg(*args, "resume=true", tmp=tmp_path), tmp_path / "cut")
    assert _lines(tmp_path / "cut") == _lines(tmp_path / "full")


def test_a_line_cut_short_by_a_kill_does_not_stop_the_resume(tmp_path, monkeypatch):
    args = [*BASE, "epochs=3"]
    run(make_cfg(*args, tmp=tmp_path), tmp_path / "full")
    with stop_in_epoch(3, monkeypatch), pytest.raises(Interrupted):
        run(make_cfg(*args, tmp=tmp_path), tmp_path / "cut")
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as f:
        f.write('{"model": "student", "epoch": 3, "lr"')  # killed while writing
    run(make_cfg(*args, "resume=true", tmp=tmp_path), tmp_path / "cut")
    assert _lines(tmp_path / "cut") == _lines(tmp_path / "full")


# --- 2. the teacher cache knows its data ---------------------------------------------------------------

def test_the_teacher_cache_is_keyed_by_the_data_and_reports_what_it_measures(tmp_path):
    from tests.datasets import write_image_folder

    for folder, seed in (("a", 0), ("b", 1)):  # the same layout and names, other images
        write_image_folder(tmp_path / folder / "imgs", per_class=8, size=12, seed=seed)
    args = ["dataset=image_folder", "dataset.root=imgs", "dataset.image_size=12", "dataset.num_workers=0",
            "teacher=mlp800", "student=mlp800", "teacher.batch_size=16", "student.batch_size=16"]
    first = run(make_cfg(*args, f"data_dir={tmp_path / 'a'}", tmp=tmp_path), tmp_path / "r1")
    other = run(make_cfg(*args, f"data_dir={tmp_path / 'b'}", tmp=tmp_path), tmp_path / "r2")
    assert other["teacher"]["source"] == "trained" and other["teacher"]["digest"] != first["teacher"]["digest"]

    # A cached teacher's test accuracy is measured on the data at hand, not read back from meta.json.
    folder = Path(first["teacher"]["path"]).parent
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "report": {**meta["report"], "test_acc": 0.123}}))
    again = run(make_cfg(*args, f"data_dir={tmp_path / 'a'}", tmp=tmp_path), tmp_path / "r3")
    assert again["teacher"]["source"] == "cache" and again["teacher"]["test_acc"] == first["teacher"]["test_acc"]

    (folder / "teacher.pt").write_bytes(b"half a checkpoint")  # a corrupt cached teacher names what to delete
    with pytest.raises(KdrunError, match=rf"^teacher cache={folder}/teacher.pt: not a PyTorch checkpoint.*; "
                                         rf"delete {folder} to train the teacher again$"):
        run(make_cfg(*args, f"data_dir={tmp_path / 'a'}", tmp=tmp_path), tmp_path / "r4")



def kdrun_in_process(monkeypatch, *args: str) -> None:
    """`kdrun ARGS` through the CLI's own entry point (Hydra, its callbacks, the sweep's summary), in this
    process: a CLI start's imports cost seconds. Hydra's logging set-up is undone afterwards."""
    from kdrun import cli

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    flags = [a for a in args if a.startswith("-")]  # -m: before the overrides, as Hydra's parser wants it
    monkeypatch.setattr(sys, "argv", ["kdrun", *flags, *TINY, *(a for a in args if a not in flags)])
    try:
        cli.main()
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


class Said(logging.Handler):
    """The messages of one logger, whatever Hydra does to the root logger's handlers."""

    def __init__(self, name: str):
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "Said":
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)


def test_a_new_sweep_never_writes_into_a_folder_holding_another_sweep(tmp_path, monkeypatch):
    """The same one-job sweep twice into one hydra.sweep.dir (no resume=true): the second writes into
    <dir>_1, says so, and leaves the first sweep's files as they were."""
    sweep = tmp_path / "sweep"
    args = ["-m", *BASE, "seed=0", f"hydra.sweep.dir={sweep}", f"teacher_cache={tmp_path / 'teachers'}"]
    kdrun_in_process(monkeypatch, *args)
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "ok"
    before = _files(sweep)
    with Said("kdrun.rundir") as said:
        kdrun_in_process(monkeypatch, *args)
    assert said.messages == [f"{sweep} holds another sweep: this one writes into {sweep}_1"]
    second = tmp_path / "sweep_1"
    summary = json.loads((second / "0" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["run_dir"] == str(second / "0")
    assert (second / "summary.csv").is_file() and (second / "multirun.yaml").is_file()  # the sweep's own record
    assert _files(sweep) == before


# --- the scratch baseline of a sweep, trained once ----------------------------------------------------

def test_equal_baselines_of_a_sweep_are_trained_once(tmp_path):
    from kdrun.rundir import mark_sweep

    sweep = tmp_path / "sweep"
    mark_sweep(sweep)  # what the CLI does for every multirun
    # job 5: what only says how a run is carried out or recorded (a tracker, where the data is) is no new baseline
    jobs = [["T=2"], ["T=8", "alpha=0.5", "teacher.epochs=5"], ["seed=1"], ["T=8", "seed=1"], ["student.lr=0.2"],
            ["logger=csv", "cache_teacher_logits=false", "dist_timeout_s=60", f"data_dir={tmp_path}"]]
    summaries = [run(make_cfg(*BASE, *overrides, tmp=tmp_path), sweep / str(i)) for i, overrides in enumerate(jobs)]
    assert [s.get("shared_from") for s in summaries] == [None, "0", None, "2", None, "0"]
    assert summaries[1]["student"] == summaries[0]["student"] and summaries[3]["student"] == summaries[2]["student"]
    assert not (sweep / "1" / "metrics.jsonl").exists() and not (sweep / "1" / "checkpoints").exists()
    assert json.loads((sweep / "1" / "summary.json").read_text())["T"] == 8  # its own settings, the shared result
    # a resumed sweep finds a shared job complete
    again = run(make_cfg(*BASE, "T=8", "alpha=0.5", "teacher.epochs=5", "resume=true", tmp=tmp_path), sweep / "1")
    assert again == summaries[1]


# --- ordinary faults end in one line -------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"just some text\n", b"", bytes(range(255, -1, -1)) * 8])
def test_a_file_that_is_no_checkpoint_is_called_so(tmp_path, content):
    from kdrun.checkpoint import load_checkpoint

    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(KdrunError) as e:
        load_checkpoint(tmp_path / "x.pt", "teacher.checkpoint")
    assert str(e.value) == (f"teacher.checkpoint={tmp_path / 'x.pt'}: not a PyTorch checkpoint (not a file written "
                            "by torch.save); give the path of a .pt file saved with torch.save")


def test_a_checkpoint_cut_short_is_called_damaged(tmp_path):
    import torch

    from kdrun.checkpoint import load_checkpoint

    torch.save({"model": torch.zeros(100)}, tmp_path / "x.pt")
    (tmp_path / "x.pt").write_bytes((tmp_path / "x.pt").read_bytes()[:300])
    with pytest.raises(KdrunError, match=r"x.pt: a damaged PyTorch checkpoint, cut short or altered \(\S"):
        load_checkpoint(tmp_path / "x.pt", "teacher.checkpoint")


# --- checks that come first ------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["kd=at"], r"^kd.at: .*"),  # attention maps need feature maps; an MLP has flat features
    (["kd=fitnet", "kd.fitnet.student_layers=[nope]"], r"nope.*fc1"),  # lists the model's module paths
])
def test_layer_checks_come_before_the_teacher_trains(tmp_path, args, message):
    with pytest.raises(KdrunError, match=message):
        run(make_cfg(*WITH_TEACHER, *args, tmp=tmp_path), tmp_path / "r")
    assert not (tmp_path / "teachers").exists()


def _write_idx(path: Path, array) -> None:
    """An IDX file as MNIST's: a magic number (uint8, dimension count), the sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.tobytes())


def test_a_corrupt_or_unreadable_data_file_is_not_called_missing(tmp_path):
    import numpy as np

    raw = tmp_path / "MNIST" / "raw"
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((n, 28, 28), np.uint8))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])  # cut short
    cfg = make_cfg(*BASE, "dataset=mnist", f"data_dir={tmp_path}", tmp=tmp_path)
    with pytest.raises(KdrunError, match=rf"^dataset=mnist: {images} is corrupt \(not an IDX file of images of the "
                                         r"size its header gives\); replace it"):
        run(cfg, tmp_path / "r1")
    images.unlink()
    images.mkdir()  # a file that exists but cannot be read
    with pytest.raises(KdrunError, match=rf"^dataset=mnist: could not read {images} \(Is a directory\)"):
        run(cfg, tmp_path / "r2")


def test_cifar_files_that_are_not_the_originals_are_called_corrupt(tmp_path):
    from tests.datasets import write_cifar

    write_cifar(tmp_path, 10, per_batch=4)  # readable, but not the files whose md5 torchvision knows
    with pytest.raises(KdrunError, match=r"^dataset=cifar10: .*cifar-10-batches-py/data_batch_1 is corrupt \(its md5"):
        run(make_cfg(*BASE, "dataset=cifar10", f"data_dir={tmp_path}", tmp=tmp_path), tmp_path / "r")


def test_an_unreadable_image_is_named(tmp_path):
    from tests.datasets import write_image_folder

    write_image_folder(tmp_path / "imgs", per_class=4, size=12)
    (tmp_path / "imgs" / "dog" / "2.png").write_bytes(b"not a png")
    args = ["dataset=image_folder", f"dataset.root={tmp_path / 'imgs'}", "dataset.image_size=12",
            "dataset.num_workers=1", "dataset.val_split=0", "student.batch_size=4"]
    with pytest.raises(KdrunError) as e:  # read by a DataLoader worker process
        run(make_cfg(*BASE, *args, tmp=tmp_path), tmp_path / "r")
    assert str(e.value) == (f"dataset.root: cannot read the image {tmp_path / 'imgs' / 'dog' / '2.png'} (cannot "
                            "identify image file); remove it or replace it with an intact image")


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path):
    """(As root, permissions do not stop a write: a path through a file, and a name too long, do.)"""
    (tmp_path / "file").write_text("")
    with pytest.raises(KdrunError, match=rf"^hydra.run.dir={tmp_path / 'file' / 'r'}: cannot write there \(Not a "
                                         r"directory\); choose a writable folder"):
        run(make_cfg(*BASE, tmp=tmp_path), tmp_path / "file" / "r")
    with pytest.raises(KdrunError, match=rf"^teacher_cache={tmp_path / 'file' / 't'}: cannot write there"):
        run(make_cfg(*WITH_TEACHER, f"teacher_cache={tmp_path / 'file' / 't'}"), tmp_path / "r")
    with pytest.raises(KdrunError, match=r"^hydra.run.dir=.*: cannot write there \(File name too long\)"):
        run(make_cfg(*BASE, tmp=tmp_path), tmp_path / ("x" * 300))


# --- the command line ------------------------------------------------------------------------------------

def test_model_kwargs_need_no_plus_and_a_wrong_one_is_one_line(tmp_path):
    from hydra.errors import ConfigCompositionException

    cfg = make_cfg("student=resnet18", "student.kwargs.zero_init_residual=true", "teacher.kwargs.depth=3")
    assert cfg.student.kwargs.zero_init_residual is True and cfg.teacher.kwargs.depth == 3
    with pytest.raises(ConfigCompositionException):  # every other key is still checked
        make_cfg("student.dropuot=0.3")
    with pytest.raises(KdrunError, match=r"^model mlp800: no argument 'depth' \(its kwargs are dropout, "
                                         r"input_dropout\): check the model's kwargs"):
        run(make_cfg(*BASE, "student.kwargs.depth=3", tmp=tmp_path), tmp_path / "r")


def test_the_composed_config_shows_each_teacher_once():
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(make_cfg())
    assert text.count("name: mlp1200") == 1 and text.count("optimizer:") == 2  # the teacher's and the student's


def test_help_lists_what_a_user_selects_and_version_is_kdruns(tmp_path):
    import kdrun

    text = kdrun_cli("--help", cwd=tmp_path).stdout
    groups = {line.split(":")[0].strip() for line in text.splitlines() if line.startswith("  ") and ": " in line}
    assert {"teacher", "student", "dataset", "kd", "scheme", "logger", "pair", "+experiment"} <= groups
    assert "model" not in groups
    kd_line = next(line for line in text.splitlines() if line.startswith("  kd: "))
    from tests.conftest import CONFIGS

    assert set(kd_line[len("  kd: "):].split("  (")[0].split(", ")) == {p.stem for p in (CONFIGS / "kd").glob("*.yaml")}
    assert kdrun_cli("--version", cwd=tmp_path).stdout.strip() == f"kdrun {kdrun.__version__}"


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    import signal
    import time

    env = {**os.environ, "KDRUN_DATA_DIR": str(DATA_DIR)}
    proc = subprocess.Popen([sys.executable, "-m", "kdrun", *BASE, f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # importing torch and composing the config: long before any training (and its end)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("kdrun: interrupted")
