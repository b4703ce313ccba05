"""Sweep summaries: from the job directories a sweep left on disk to rows, seed means and gains.

Pure functions over `.hydra/overrides.yaml` and `summary.json`, shared by the end-of-sweep callback
and `kdrun-report` (kdrun/report.py), so both write the same files from the same directories.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from kdrun import KdrunError
from kdrun.baseline import IGNORED as BASELINE_IGNORES
from kdrun.rundir import BOOKKEEPING

# Overrides are keyed by their top-level setting: `kd.hinton.T` is a `kd` setting, `logger.mlflow.x` a `logger` one.
# rundir.BOOKKEEPING (how a run is carried out or recorded, not what it computes) is no column, so a
# sweep continued with `resume=true` has the same rows (and seed groups) as before.
# kdrun.baseline.IGNORED (what a student trained without a teacher cannot depend on): a kd=none job's
# values of these keys (but kd itself) are left out of its group, as kdrun.baseline trains one baseline for all of them.
# What is ignored when a KD job is matched to its scratch baseline: those, lambda (whatever a KD
# job's weights), and the seed (the baseline is a mean over seeds).
NOT_BASELINE = (*BASELINE_IGNORES, "lambda", "seed")


def setting(key: str) -> str:
    """The top-level setting an override's key belongs to."""
    return key.partition(".")[0]

METRICS = ("teacher_test_acc", "student_test_acc", "student_val_acc")
TOP5 = ("teacher_test_acc5", "student_test_acc5")  # columns of their own when a job reports top-5 (>10 classes)
# From each model's deployment report (summary.json's `deploy`, kdrun/deploy.py): column -> (model, key).
DEPLOY = {"student_params": ("student", "params"), "student_macs": ("student", "macs"),
          "student_cpu_latency_ms": ("student", "cpu_latency_ms"), "student_throughput": ("student", "throughput"),
          "teacher_macs": ("teacher", "macs"), "teacher_cpu_latency_ms": ("teacher", "cpu_latency_ms")}
RANK_BY = ("student_val_acc", "student_test_acc")  # validation first: never select on the test set
DIGITS = 6  # means, stds and gains: enough for a 1e6-image test set, without float noise


@dataclass
class Job:
    """One run directory: its overridden keys (as typed) and its summary.json ({} while missing)."""

    name: str
    path: Path
    overrides: dict
    summary: dict

    @property
    def status(self) -> str:
        """ok, failed, missing, or shared: a kd=none job whose result is an equal job's (kdrun.baseline)."""
        if not self.summary:
            return "missing"
        status = self.summary.get("status", "ok")
        return "shared" if status == "ok" and self.summary.get("shared_from") else status

    @property
    def is_scratch(self) -> bool:
        """A result of a student trained from labels alone (kd=none), its own or shared: the baseline
        of the sweep's KD jobs."""
        return self.status in ("ok", "shared") and self.summary.get("kd") == []

    @property
    def source(self) -> str:
        """The run directory whose training gave this job's result: a shared job's is the one it shared."""
        shared = self.summary.get("shared_from")
        return str((self.path.parent / shared if shared else self.path).resolve())

    @property
    def is_baseline(self) -> bool:
        """A kd=none job, whatever its status."""
        return self.summary["kd"] == [] if "kd" in self.summary else self.overrides.get("kd") == "none"


# ---------------------------------------------------------------------------------------------
# Reading the directories
# ---------------------------------------------------------------------------------------------

def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "overrides.yaml").is_file() or (path / "summary.json").is_file()


def find_run_dirs(path: Path) -> list[Path]:
    """`path` itself if it is a run directory, else every run directory below it."""
    path = Path(path)
    if not path.is_dir():
        raise KdrunError(f"{path}: no such directory; give a sweep directory or run directories")
    if is_run_dir(path):
        return [path]
    found = []
    for root, dirs, _ in os.walk(path):
        here = Path(root)
        if here != path and is_run_dir(here):
            found.append(here)
            dirs[:] = []  # a run directory holds no other runs
            continue
        # Hidden folders are tools' (.hydra, .submitit); curves/ and checkpoints/ are ours.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("checkpoints", "curves"))
    return found


def is_dry_run(path: Path) -> bool:
    """A dry run's directory: Hydra's files and a layer table, no results (and never a summary)."""
    if (path / "summary.json").is_file():
        return False
    try:
        record = json.loads((path / ".kdrun" / "run.json").read_text())
    except (OSError, ValueError):  # a run from before kdrun kept that record: Hydra's copy of the config
        import yaml

        try:
            record = yaml.safe_load((path / ".hydra" / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            return False
    return isinstance(record, dict) and record.get("dry_run") is True


def report_dir(path: Path) -> Path:
    """Where kdrun-report writes by default: into a sweep's or a run's own directory, but beside
    (`<folder>-report`) any other folder of runs, whose contents are not the report's to add to."""
    path = Path(path).resolve()
    if (path / "multirun.yaml").is_file() or (path / ".kdrun" / "sweep.json").is_file() or is_run_dir(path):
        return path
    return path.with_name(f"{path.name}-report")


def parse_overrides(items: Iterable[str]) -> dict:
    """`["T=2", "+x=1", "progress=false"]` -> `{"T": "2", "x": "1"}`: values as the user typed them."""
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key and setting(key) not in (*BOOKKEEPING, "hydra"):
            out[key] = value
    return out


def read_job(path: Path, name: str) -> Job:
    summary_path = path / "summary.json"
    summary: dict = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            summary = {"status": "failed", "error": f"summary.json is unreadable ({e})"}
    overrides_path = path / ".hydra" / "overrides.yaml"
    if "overrides" in summary or not overrides_path.is_file():
        # summary.json is written once, by the run; Hydra rewrites .hydra/ at every start of it.
        items = summary.get("overrides") or []
    else:  # a run still going, or killed
        from omegaconf import OmegaConf

        items = list(OmegaConf.load(overrides_path) or [])
    return Job(name=name, path=path, overrides=parse_overrides(items), summary=summary)


def read_lines(path: Path) -> list[dict]:
    """A JSON-lines file (metrics.jsonl): every complete line; a line cut short by a killed run is skipped."""
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def natural_key(name: str) -> list:
    """Job "10" after job "9"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_jobs(paths: Iterable[Path]) -> list[Job]:
    """Every run directory under `paths`, named by its path below their common folder ("0", "1"...)."""
    dirs: dict[Path, None] = {}
    for path in paths:
        for d in find_run_dirs(Path(path)):
            dirs.setdefault(d.resolve(), None)
    if not dirs:
        shown = " ".join(str(p) for p in paths)
        raise KdrunError(f"no run directories under {shown} (a run directory holds .hydra/overrides.yaml or "
                         "summary.json): give a sweep directory (outputs/sweeps/<date>/<time>) or run directories")
    found = [d for d in dirs if not is_dry_run(d)]
    if not found:
        raise KdrunError(f"only dry runs under {' '.join(str(p) for p in paths)}: they train nothing to summarise")
    common = Path(os.path.commonpath(found)) if len(found) > 1 else found[0].parent
    jobs = [read_job(d, d.relative_to(common).as_posix()) for d in found]
    return sorted(jobs, key=lambda j: natural_key(j.name))


# ---------------------------------------------------------------------------------------------
# Rows, the scratch baseline, seed means, ranking
# ---------------------------------------------------------------------------------------------

def _mean(xs: list) -> Optional[float]:
    return round(statistics.fmean(xs), DIGITS) if xs else None


def _std(xs: list) -> Optional[float]:
    """The sample standard deviation (n - 1 in the denominator); undefined for one value."""
    return round(statistics.stdev(xs), DIGITS) if len(xs) > 1 else None


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else round(a - b, DIGITS)


def _baseline_identity(job: Job) -> tuple:
    return tuple(sorted((k, v) for k, v in job.overrides.items() if setting(k) not in NOT_BASELINE))


def scratch_baselines(jobs: list[Job]) -> dict:
    """job name -> the mean student test accuracy of the kd=none results (`ok` jobs, and `shared`
    ones) whose jobs share every overridden key with it but NOT_BASELINE (any seed); a result
    shared by several jobs counts once. A job with no such baseline is left out."""
    pools = defaultdict(dict)
    for job in jobs:
        if job.is_scratch:
            pools[_baseline_identity(job)][job.source] = job.summary["student"]["test_acc"]
    out = {}
    for job in jobs:
        pool = pools.get(_baseline_identity(job))
        if pool:
            out[job.name] = _mean(list(pool.values()))
    return out


def override_keys(jobs: list[Job]) -> list[str]:
    """Every key any job overrode, in the order they were first given."""
    keys: dict[str, None] = {}
    for job in jobs:
        for key in job.overrides:
            keys.setdefault(key, None)
    return list(keys)


@dataclass
class Summary:
    """One row per job: `keys` are the overridden keys (a column each, "" where a job kept the default)."""

    keys: list
    rows: list
    has_scratch: bool  # the sweep has a kd=none job: rows carry scratch_test_acc and gain
    has_top5: bool = False  # a job reports top-5 accuracy: rows carry teacher/student_test_acc5
    has_deploy: bool = False  # a job has a deployment report: rows carry the DEPLOY columns

    @property
    def metrics(self) -> tuple:
        return METRICS + (TOP5 if self.has_top5 else ())

    @property
    def columns(self) -> list:
        return ["job", "status", *self.keys, *self.metrics, *(("scratch_test_acc", "gain") if self.has_scratch else ()),
                *(DEPLOY if self.has_deploy else ()), "wall_time_s", "error"]


def summarise(jobs: list[Job]) -> Summary:
    """Per job: teacher and student test accuracy, the student's validation accuracy, the scratch
    baseline and the gain over it (when the sweep has a kd=none job), the models' deployment figures
    (when a job has them), wall time, status, error."""
    keys = override_keys(jobs)
    baselines = scratch_baselines(jobs)
    has_scratch = any(job.is_scratch for job in jobs)
    has_top5 = any("test_acc5" in (job.summary.get(m) or {}) for job in jobs for m in ("teacher", "student"))
    has_deploy = any("deploy" in (job.summary.get("student") or {}) for job in jobs)
    rows = []
    for job in jobs:
        s = job.summary
        teacher, student = s.get("teacher") or {}, s.get("student") or {}
        row = {"job": job.name, "status": job.status, **{k: job.overrides.get(k, "") for k in keys},
               "teacher_test_acc": teacher.get("test_acc"), "student_test_acc": student.get("test_acc"),
               "student_val_acc": student.get("best_val_acc")}
        if has_top5:
            row.update({"teacher_test_acc5": teacher.get("test_acc5"), "student_test_acc5": student.get("test_acc5")})
        if has_scratch:
            row["scratch_test_acc"] = baselines.get(job.name)
            row["gain"] = _diff(row["student_test_acc"], row["scratch_test_acc"])
        if has_deploy:
            row["is_scratch"] = job.is_scratch  # not a column: the trade-off plot marks the kd=none jobs (`ok` ones)
            for column, (model, key) in DEPLOY.items():
                row[column] = ((s.get(model) or {}).get("deploy") or {}).get(key)
        row["wall_time_s"] = s.get("wall_time_s")
        row["error"] = s.get("error", "")
        row["baseline"] = job.is_baseline  # not a column: it decides the job's group
        row["source"] = job.source  # not a column: a result shared by several jobs is counted once
        rows.append(row)
    return Summary(keys=keys, rows=rows, has_scratch=has_scratch, has_top5=has_top5, has_deploy=has_deploy)


def aggregate_seeds(summary: Summary) -> tuple[list[str], list[dict]]:
    """Rows that share every key but `seed` become one: mean, sample std and count (n) of the results
    (`ok` jobs, and `shared` ones whose result no other job of the group has), and how many failed or are
    missing. Returns (columns, groups); groups keep their first job's order."""
    group_keys = [k for k in summary.keys if k != "seed"]
    # kd=none jobs that differ only in what the baseline ignores (T, alpha, teacher*, kd.*, ...) are one
    # group: one baseline, shown once.
    ignored = {k for k in group_keys if k != "kd" and setting(k) in BASELINE_IGNORES}
    groups: dict[tuple, list[dict]] = {}
    for row in summary.rows:
        groups.setdefault(tuple("" if row.get("baseline") and k in ignored else row[k] for k in group_keys),
                          []).append(row)
    out = []
    for values, members in groups.items():
        # One result per training: a `shared` job's copy counts only where the job it shared is not in the group.
        results: dict[str, dict] = {}
        for r in members:
            if r["status"] in ("ok", "shared"):
                results.setdefault(r["source"], r)
        ok = list(results.values())
        trained_here = {r["source"] for r in members if r["status"] == "ok"}
        group = {**dict(zip(group_keys, values)), "jobs": " ".join(r["job"] for r in members), "n": len(ok),
                 "baseline": all(r.get("baseline") for r in members),
                 "n_shared": sum(r["source"] not in trained_here for r in ok),  # not a column: the status says it
                 "n_failed": sum(r["status"] == "failed" for r in members),
                 "n_missing": sum(r["status"] == "missing" for r in members)}
        for metric in summary.metrics:
            xs = [r[metric] for r in ok if r[metric] is not None]
            group[f"{metric}_mean"] = _mean(xs)
            if metric == "student_test_acc":
                group[f"{metric}_std"] = _std(xs)
        if summary.has_scratch:
            group["scratch_test_acc"] = _mean([r["scratch_test_acc"] for r in ok if r["scratch_test_acc"] is not None])
            group["gain_mean"] = _mean([r["gain"] for r in ok if r["gain"] is not None])
        group["error"] = next((r["error"] for r in members if r["error"]), "")
        out.append(group)
    columns = [*group_keys, "jobs", "n", "n_failed", "n_missing", "teacher_test_acc_mean", "student_test_acc_mean",
               "student_test_acc_std", "student_val_acc_mean", *(f"{m}_mean" for m in TOP5 if summary.has_top5),
               *(("scratch_test_acc", "gain_mean") if summary.has_scratch else ()), "error"]
    return columns, out


def swept_keys(keys: list[str], rows: list[dict]) -> list[str]:
    """The keys (other than seed) that take more than one value: the axes of the sweep's plots."""
    return [k for k in keys if k != "seed" and len({r.get(k, "") for r in rows}) > 1]


def is_grid(groups: list[dict], a: str, b: str) -> bool:
    """Whether two keys' values were crossed (a grid sweep, perhaps unfinished) rather than sampled
    (an Optuna search): more than half of the combinations have a job. Non-numbers are always a grid."""
    try:
        [float(g[k]) for g in groups for k in (a, b)]
    except ValueError:
        return True
    cells = {(g[a], g[b]) for g in groups}
    return len(cells) > 0.5 * len({g[a] for g in groups}) * len({g[b] for g in groups})


def rank(rows: list[dict], suffix: str = "") -> tuple[list[dict], str]:
    """Best first by the student's validation accuracy (test accuracy only when no job has a
    validation split); rows without a result follow in their own order. Returns (rows, the key used)."""
    by = next((m + suffix for m in RANK_BY if any(r.get(m + suffix) is not None for r in rows)), RANK_BY[0] + suffix)
    scored = [r for r in rows if r.get(by) is not None]
    rest = [r for r in rows if r.get(by) is None]
    return sorted(scored, key=lambda r: -r[by]) + rest, by


def value_order(values: Iterable[str]) -> list[str]:
    """Distinct values in numeric order when they are all numbers, else in the order first seen."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


# ---------------------------------------------------------------------------------------------
# Text renderings
# ---------------------------------------------------------------------------------------------

def short(value: str) -> str:
    """A key's value for a table or an axis: a long number (an Optuna sample) to 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 6 else value


def to_csv(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def format_value(column: str, value) -> str:
    """Accuracies in %, gains in signed percentage points, seconds to 0.1."""
    if value is None or value == "":
        return ""
    if column.startswith("gain"):
        return f"{100 * value:+.2f}"
    if "_acc" in column:
        return f"{100 * value:.2f}"
    if column == "wall_time_s":
        return f"{value:.1f}"
    if column.endswith("_ms"):
        return f"{value:.3g}"
    if column.endswith("_throughput"):
        return f"{value:.0f}"
    return str(value)


def to_markdown(columns: list[str], rows: list[dict]) -> str:
    def cell(column, value):
        return format_value(column, value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
