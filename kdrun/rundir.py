"""Run directories you can trust: every run gets its own, and a resume is checked before anything
in the directory changes.

A directory becomes a run's when kdrun creates `.kdrun/` in it: `mkdir` is atomic, so of two runs
started together (two processes in the same second get the same timestamped `hydra.run.dir`)
exactly one gets it, and the other takes `<dir>_1`. `.kdrun/run.json` records what runs there (its
config digest, the resume check); `.kdrun/hydra/` keeps the `.hydra/` files of the run's first
start, because Hydra rewrites `.hydra/` at every start before kdrun can look: a resume puts them
back. `.kdrun/lock` is held while a run is in progress, so a second resume of it is refused.

The Hydra callback (`RunDirectory`, configs/config.yaml) picks the directory of a single run, and
of a sweep, before Hydra writes into it; the jobs of a sweep are checked by run() itself.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Iterator, Optional

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from kdrun import KdrunError

log = logging.getLogger(__name__)

MARK = ".kdrun"
RESULTS = ("summary.json", "metrics.jsonl", "checkpoints")  # what runs from before .kdrun/ left
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")

# Settings that say how a run is carried out or recorded, or where its files are, not what it computes:
# not hyperparameters (kdrun.loggers), not columns of a sweep's summary (kdrun.sweep), and no reason to
# train a sweep's kd=none baseline again (kdrun.baseline). `logger` also covers `logger.<tracker>.*`.
BOOKKEEPING = ("resume", "progress", "dry_run", "data_dir", "teacher_cache", "logger", "dist_timeout_s",
               "deploy_report")
# What a resume is not checked against: the same, but for teacher_cache, which a resume has always
# been checked against (a teacher found in another cache may be another training of it).
RESUME_IGNORES = tuple(k for k in BOOKKEEPING if k != "teacher_cache")

# Directories this process claimed for a run it has not started yet (the CLI's callback claims the
# run directory before Hydra writes into it; run() then knows the directory is new).
_claimed: set[Path] = set()


class Refused(KdrunError):
    """The run may not use the directory it was given (it holds another run, or the resume is of
    another config). Nothing in the directory was changed, so a sweep records no failure there."""


def cannot_write(setting: str, path: Path, error: OSError) -> KdrunError:
    """The one line for an output folder that cannot be written (read-only, full, a name too long)."""
    why = error.strerror or str(error)
    return KdrunError(f"{setting}={path}: cannot write there ({why}); choose a writable folder with a shorter path, "
                      "or free some space")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def claim(path: Path, taken_if: tuple = (), setting: str = "hydra.run.dir") -> bool:
    """Makes `path` this process's run directory, atomically; False if it already is (or was)
    another run's. `taken_if` names more files whose presence means a run was there."""
    path = Path(path).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if any((path / name).exists() for name in (*RESULTS, *taken_if)):
            return False
        (path / MARK).mkdir()
    except FileExistsError:
        return False
    except OSError as e:
        raise cannot_write(setting, path, e) from None
    _claimed.add(path)
    return True


def unique(path: Path, taken_if: tuple = (), setting: str = "hydra.run.dir") -> Path:
    """`path`, or the first of `path_1`, `path_2`, ... that no other run has claimed."""
    path = Path(path).absolute()
    n = 0
    while not claim(candidate := path if n == 0 else path.with_name(f"{path.name}_{n}"), taken_if, setting):
        n += 1
    return candidate


def _copy_hydra(src: Path, dst: Path) -> None:
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for name in HYDRA_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _recorded_digest(run_dir: Path) -> Optional[str]:
    return _read_json(run_dir / MARK / "run.json").get("config_digest") or \
        _read_json(run_dir / "summary.json").get("config_digest")


def _in_use(run_dir: Path) -> bool:
    lock = FileLock(str(run_dir / MARK / "lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _record(path: Path, digest: str, overrides: list, dry_run: bool) -> None:
    from kdrun.checkpoint import write_json_atomic

    write_json_atomic(path, {"config_digest": digest, "overrides": list(overrides), "dry_run": dry_run})


def another_config(run_dir: Path, complete: bool) -> Refused:
    return Refused(f"resume=true: {run_dir} holds a {'complete ' if complete else ''}run of another config; resume "
                   "with the same overrides (and the same order of sweep values) as before, or start a new run "
                   "directory")


@contextlib.contextmanager
def opened(run_dir: Path, resume: bool, dry_run: bool, digest: str, overrides: list) -> Iterator[Optional[dict]]:
    """run()'s way into its directory, before it writes or trains anything. A new directory is
    claimed and recorded; one that holds a run is refused unless this is a resume of that run
    (same config digest). Yields the run's summary when a resume finds it complete (nothing to do),
    else None; the directory is locked until the block ends."""
    run_dir = Path(run_dir).absolute()
    fresh = run_dir in _claimed or claim(run_dir)
    _claimed.discard(run_dir)
    record_path = run_dir / MARK / "run.json"
    if not fresh and _read_json(record_path).get("dry_run") and not (run_dir / "summary.json").exists():
        fresh = True  # a dry run left only its layer table: nothing to keep
    if not fresh and not resume:
        raise Refused(f"{run_dir} holds a run already: continue it with resume=true (and the same overrides), or give "
                      "this run a directory of its own (hydra.run.dir=...)")
    try:
        (run_dir / MARK).mkdir(exist_ok=True)
        lock = FileLock(str(run_dir / MARK / "lock"))
        lock.acquire(timeout=0)
    except Timeout:
        raise Refused(f"{run_dir} is in use by another kdrun process: let it finish (or stop it) first") from None
    except OSError as e:
        raise cannot_write("hydra.run.dir", run_dir, e) from None
    try:
        if fresh:
            if resume:
                log.warning("resume=true: %s holds no run to resume; starting it from the beginning", run_dir)
            _record(record_path, digest, overrides, dry_run)
            _copy_hydra(run_dir / ".hydra", run_dir / MARK / "hydra")
            yield None
            return
        # Hydra has rewritten .hydra/ for this start: the run's own record is the first start's.
        _copy_hydra(run_dir / MARK / "hydra", run_dir / ".hydra")
        previous = _read_json(run_dir / "summary.json")
        recorded = _recorded_digest(run_dir)
        if recorded is not None and recorded != digest:
            raise another_config(run_dir, previous.get("status") == "ok")
        if not record_path.exists():  # a run from before this record (or one that never got that far)
            _record(record_path, digest, overrides, dry_run)
        if previous.get("status") == "ok":
            log.info("resume=true: %s is complete already", run_dir)
            yield previous
            return
        if previous.get("status") == "failed":
            log.info("resume=true: %s failed before (%s); running it again", run_dir, previous.get("error"))
        yield None
    finally:
        lock.release()


def config_digest(cfg: DictConfig, drop: tuple = RESUME_IGNORES, fixed: Optional[dict] = None) -> str:
    """Identifies what a run computes: its config but the keys in `drop` (by default everything but
    what a resume is checked against), with the values in `fixed` put in."""
    from kdrun.config import plain

    node = {k: v for k, v in plain(cfg).items() if k not in drop}
    node.update(fixed or {})
    return hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_digest(config: DictConfig) -> str:
    """config_digest of the task part of Hydra's full config (what run() will get)."""
    return config_digest(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]))


def check_resume(run_dir: Path, digest: str) -> None:
    """The resume check of a single run, made before Hydra writes into its directory."""
    if not run_dir.is_dir() or not (run_dir / MARK).is_dir() and not any((run_dir / n).exists() for n in RESULTS):
        return  # nothing to resume: run() says so
    if (run_dir / MARK).is_dir() and _in_use(run_dir):
        raise Refused(f"{run_dir} is in use by another kdrun process: let it finish (or stop it) first")
    if _read_json(run_dir / MARK / "run.json").get("dry_run"):
        return
    recorded = _recorded_digest(run_dir)
    if recorded is not None and recorded != digest:
        raise another_config(run_dir, _read_json(run_dir / "summary.json").get("status") == "ok")


def mark_sweep(sweep_dir: Path) -> None:
    """Marks a folder as a sweep's, for the jobs that look for an equal job to share (kdrun.baseline)."""
    from kdrun.checkpoint import write_json_atomic

    (sweep_dir / MARK).mkdir(parents=True, exist_ok=True)
    write_json_atomic(sweep_dir / MARK / "sweep.json", {"sweep": str(sweep_dir)})


def sweep_of(run_dir: Path) -> Optional[Path]:
    """The sweep directory that holds `run_dir` as one of its jobs, or None."""
    parent = Path(run_dir).absolute().parent
    return parent if (parent / MARK / "sweep.json").is_file() else None


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


class RunDirectory(Callback):
    """Registered in configs/config.yaml (hydra.callbacks): chooses the directory of a run, or of a
    sweep, before Hydra writes `.hydra/` and `kdrun.log` into it. A new run never shares a folder
    with another run: a taken folder becomes `<folder>_1` (`_2`, ...). A resume of a single run is
    checked here, so that a refused one leaves its directory exactly as it was."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        import sys

        path = Path(str(config.hydra.run.dir)).absolute()
        try:
            if config.get("resume"):
                check_resume(path, task_digest(config))
                claim(path, taken_if=(".hydra",))
                return
            chosen = unique(path, taken_if=(".hydra",))
        except KdrunError as e:
            sys.exit(f"kdrun: error: {e}")
        if chosen != path:
            log.warning("%s holds another run: this run writes into %s", path, chosen)
            with read_write(config.hydra.run):
                config.hydra.run.dir = str(chosen)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        import sys

        path = Path(str(config.hydra.sweep.dir)).absolute()
        try:
            if config.get("resume"):
                mark_sweep(path)
                return
            chosen = unique(path, taken_if=("multirun.yaml",), setting="hydra.sweep.dir")
            _claimed.discard(chosen)  # a sweep's folder, not a run's
            mark_sweep(chosen)
        except (KdrunError, OSError) as e:
            sys.exit(f"kdrun: error: {e}")
        if chosen != path:
            log.warning("%s holds another sweep: this one writes into %s", path, chosen)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweep.dir = str(chosen)
                # The jobs' configs are composed again from these overrides: they must see it too.
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir={_quoted(chosen)}")

