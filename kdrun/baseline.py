"""The scratch baseline of a sweep, trained once.

In `kdrun -m kd=hinton,none T=2,4`, both kd=none jobs train the same student from the same labels:
a student without a teacher ignores T, alpha, the teacher and every kd.* setting. The first such
job of a sweep trains it; every later kd=none job whose settings differ only in what the baseline
ignores shares its result (its summary.json says `shared_from`, the job that trained it) instead of
training it again. Jobs that start together (a parallel launcher) wait on one lock per baseline.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator, Optional

from filelock import FileLock
from omegaconf import DictConfig

from kdrun.config import ce_weight
from kdrun.rundir import BOOKKEEPING, MARK, _read_json, config_digest, sweep_of

log = logging.getLogger(__name__)

# What a student trained from labels alone does not depend on (besides rundir.BOOKKEEPING, which no
# run's result depends on): the one list, which kdrun.sweep also reads to group and match the
# kd=none jobs of a sweep's summary. `lambda` stays in: with kd=none it is the weight of the cross-entropy.
IGNORED = ("teacher", "T", "alpha", "kd", "ensemble", "cache_teacher_logits")


def baseline_digest(cfg: DictConfig) -> Optional[str]:
    """What a kd=none run computes; None for any other run."""
    if cfg.kd or cfg.scheme.name != "offline":
        return None
    return config_digest(cfg, drop=BOOKKEEPING + IGNORED, fixed={"lambda": ce_weight(cfg)})


@contextlib.contextmanager
def shared(cfg: DictConfig, run_dir: Path) -> Iterator[Optional[dict]]:
    """Yields the summary of an equal kd=none job of the same sweep that finished `ok` (to share),
    or None: this job trains the baseline, and once its summary says `ok`, later ones share it."""
    digest = baseline_digest(cfg)
    sweep = sweep_of(run_dir)
    if digest is None or sweep is None or cfg.dry_run:
        yield None
        return
    folder = sweep / MARK / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{digest}.lock")):
        source = _read_json(folder / f"{digest}.json").get("job")
        summary = _read_json(sweep / source / "summary.json") if source else {}
        if summary.get("status") == "ok" and summary.get("baseline_digest") == digest \
                and (sweep / source).resolve() != Path(run_dir).resolve():
            log.info("kd=none: the same baseline as job %s of this sweep; sharing its result", source)
            yield summary
            return
        yield None
        if _read_json(Path(run_dir) / "summary.json").get("status") == "ok":
            from kdrun.checkpoint import write_json_atomic

            write_json_atomic(folder / f"{digest}.json", {"job": Path(run_dir).name})


def share(summary: dict, cfg: DictConfig, run_dir: Path, overrides: list, config_digest: str) -> dict:
    """This job's summary.json: the shared job's results, this job's settings."""
    from kdrun.checkpoint import write_json_atomic

    source = Path(summary["run_dir"]).name
    mine = {**summary, "T": cfg.T, "alpha": cfg.alpha, "seed": cfg.seed, "wall_time_s": 0.0,
            "run_dir": str(Path(run_dir).resolve()), "overrides": overrides, "config_digest": config_digest,
            "shared_from": source}
    write_json_atomic(Path(run_dir) / "summary.json", mine)
    return mine
