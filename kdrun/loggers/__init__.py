"""Experiment trackers behind one interface: TensorBoard, MLflow, Weights & Biases, CSV.

A run selects any of them with the `logger` config group (`logger=[tensorboard,mlflow]`); each
option names its class with `_target_`. The engine knows none of them: every metrics line passes
through MetricsLog, which hands it to `Trackers` (the fan-out), and run() logs the hyperparameters
at the start and the summary at the end. metrics.jsonl is written whatever the trackers do: a
tracker that fails is switched off with one warning and the run goes on.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from kdrun import Interrupted, KdrunError
from kdrun.rundir import BOOKKEEPING

log = logging.getLogger(__name__)

# Settings that change how a run is carried out or recorded (the trackers' own among them), not
# what it computes: not hyperparameters.
NOT_PARAMS = BOOKKEEPING
STATE_FILE = "trackers.json"  # a tracker's run id, so that a resumed run continues the same tracker run


@dataclass
class RunInfo:
    """Where a run is, and which sweep it belongs to: what a tracker names its run and folders after."""

    run_dir: Path
    overrides: List[str] = field(default_factory=list)
    sweep_dir: Optional[str] = None  # hydra.sweep.dir as configured (a job of a multirun), else None
    job: Optional[str] = None  # the job's number in its sweep
    swept: List[str] = field(default_factory=list)  # the keys the sweep varies

    @property
    def settings(self) -> List[str]:
        """The overrides that say what the run computes (not resume=true, hydra.*, logger=...)."""
        return [o for o in self.overrides if _key(o).partition(".")[0] not in NOT_PARAMS + ("hydra",)]

    @property
    def name(self) -> str:
        """The tracker run's name: what sets the job apart in its sweep (else all the run's overrides)."""
        label = " ".join(o for o in self.overrides if _key(o) in self.swept) or " ".join(self.settings) or "defaults"
        return (f"{self.job}: {label}" if self.job is not None else label)[:250]

    def read_state(self, tracker: str) -> dict:
        path = self.run_dir / STATE_FILE
        return json.loads(path.read_text()).get(tracker, {}) if path.is_file() else {}

    def write_state(self, tracker: str, state: dict) -> None:
        path = self.run_dir / STATE_FILE
        states = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**states, tracker: state}, indent=1) + "\n")


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


class Logger:
    """One tracker. Each method may raise: `Trackers` turns a failure into one warning."""

    def describe(self) -> str:
        """One line for the start of the log: where to look, and the command that shows it."""
        return ""

    def log_params(self, params: Dict[str, Any]) -> None:
        """`overrides` (as typed) and the composed config, flattened (`teacher.lr`), without NOT_PARAMS."""

    def log_metrics(self, record: dict) -> None:
        """One metrics.jsonl line: `model`, `epoch` (the step) and the numbers."""

    def log_summary(self, summary: dict) -> None:
        """The end of a successful run: summary.json's numbers and, where the tracker keeps files, artifacts."""

    def close(self, status: str) -> None:
        """`status`: FINISHED, FAILED or KILLED (interrupted)."""


def require(module: str, extra: str):
    """Imports a tracker's package, or says in one line which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise KdrunError(f"logger={extra} needs the {module.partition('.')[0]} package, which is not installed: "
                         f"pip install 'kdrun[{extra}]' (or choose another logger)") from e


def numbers(record: dict) -> Dict[str, float]:
    """The numeric entries of a metrics line or summary entry (not `epoch`, not booleans)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


def flat_params(cfg) -> Dict[str, Any]:
    """The composed config as `a.b.c: value` pairs: lists as JSON text, `_target_` paths left out."""
    from kdrun.config import plain

    out: Dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).endswith("_target_"):
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, (list, tuple)) else node

    node = {k: v for k, v in plain(cfg).items() if k not in NOT_PARAMS}
    if len(node["teacher"].get("members") or {}) < 2:  # one teacher: its members entry repeats the top level
        node["teacher"].pop("members", None)
    walk("", node)
    return out


def summary_metrics(summary: dict) -> Dict[str, float]:
    """summary.json's numbers, one metric each: `<model>/test_acc`, `<model>/best_val_acc`, ...,
    `<model>/deploy/macs`, ... (the deployment report) and wall_time_s."""
    from kdrun.report import summary_rows

    out = {f"{model}/{k}": v for model, info in summary_rows(summary).items() for k, v in numbers(info).items()}
    out.update({f"{model}/deploy/{k}": v for model, info in summary_rows(summary).items()
                for k, v in numbers(info.get("deploy") or {}).items()})  # kdrun/deploy.py's figures
    out["wall_time_s"] = float(summary["wall_time_s"])
    return {k: v for k, v in out.items() if math.isfinite(v)}


class Trackers:
    """The fan-out: calls every open tracker; one that raises is closed and dropped with a warning."""

    def __init__(self, loggers: Optional[Dict[str, Logger]] = None):
        self.loggers = dict(loggers or {})

    def _each(self, method: str, *args) -> None:
        for name, logger in list(self.loggers.items()):
            try:
                getattr(logger, method)(*args)
            except Exception as e:  # a disk full or a server down must not cost the run
                self._drop(name, e)

    def _drop(self, name: str, error: Exception) -> None:
        line = (str(error).strip().splitlines() or [""])[0][:300]
        log.warning("logger=%s failed (%s: %s): it is off for the rest of this run; metrics.jsonl, the checkpoints "
                    "and summary.json are written as usual", name, type(error).__name__, line)
        logger = self.loggers.pop(name)
        try:
            logger.close("FAILED")
        except Exception:
            pass

    def log_params(self, params: Dict[str, Any]) -> None:
        self._each("log_params", params)

    def log_metrics(self, record: dict) -> None:
        self._each("log_metrics", record)

    def finish(self, summary: dict) -> None:
        """The run ended well: log its summary, then close every tracker."""
        self._each("log_summary", summary)
        self.close("FINISHED")

    def close(self, status: str) -> None:
        self._each("close", status)
        self.loggers.clear()

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind, error, tb) -> None:
        # A run that ends well is closed by finish(), after its summary is written.
        if kind is not None:
            self.close("KILLED" if issubclass(kind, (Interrupted, KeyboardInterrupt)) else "FAILED")


def _selected(logger_cfg) -> Dict[str, Any]:
    return {name: node for name, node in (logger_cfg or {}).items() if node is not None}


def open_trackers(cfg, info: RunInfo) -> Trackers:
    """The trackers that cfg.logger selects, started, with the run's hyperparameters logged. A missing
    package is the user's to fix (KdrunError, before any training); any other failure to start
    (a server down, a folder that cannot be written) is a warning, and the run goes on without it."""
    from hydra.utils import get_class

    loggers: Dict[str, Logger] = {}
    for name, node in _selected(cfg.logger).items():
        settings = {k: v for k, v in node.items() if k != "_target_"}
        try:
            loggers[name] = get_class(node._target_)(**settings, run=info)
        except KdrunError:
            raise
        except Exception as e:
            log.warning("logger=%s could not start (%s: %s): the run goes on without it", name, type(e).__name__,
                        (str(e).strip().splitlines() or [""])[0][:300])
            continue
        described = loggers[name].describe()
        if described:
            log.info("logger %s: %s", name, described)
    trackers = Trackers(loggers)
    trackers.log_params({"overrides": " ".join(info.settings), **flat_params(cfg)})
    return trackers


def log_sweep(logger_cfg, sweep_dir: Path, report: dict) -> None:
    """The end of a multirun: trackers that group a sweep's jobs (MLflow's experiment) get the sweep's
    summary files too. A failure is a warning: the files are in the sweep directory anyway."""
    from hydra.utils import get_class

    for name, node in _selected(logger_cfg).items():
        cls = get_class(node._target_)
        if not hasattr(cls, "log_sweep"):
            continue
        try:
            cls.log_sweep({k: v for k, v in node.items() if k != "_target_"}, Path(sweep_dir), report)
        except Exception as e:
            log.warning("logger=%s: the sweep summary was not logged (%s: %s); it is in %s", name,
                        type(e).__name__, (str(e).strip().splitlines() or [""])[0][:300], sweep_dir)


def run_info(run_dir: Path) -> RunInfo:
    """RunInfo from Hydra's runtime config (a CLI run or a job of a sweep); a plain one otherwise."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:  # not under Hydra: a test or a script calling run() directly
        return RunInfo(Path(run_dir).resolve())
    if hc.mode != RunMode.MULTIRUN:
        return RunInfo(Path(run_dir).resolve(), list(hc.overrides.task))
    return RunInfo(Path(run_dir).resolve(), list(hc.overrides.task), str(Path(hc.sweep.dir)), str(hc.job.num),
                   swept_keys(Path(hc.sweep.dir)))


def swept_keys(sweep_dir: Path) -> List[str]:
    """The keys a sweep varies, from Hydra's record of it (multirun.yaml): its sweep overrides
    (T=1,2,4) and a sweeper's search space (Optuna's hydra.sweeper.params)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return []
    recorded = OmegaConf.load(path).hydra
    parsed = OverridesParser.create().parse_overrides(list(recorded.overrides.task))
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    return keys + [k for k in (OmegaConf.select(recorded, "sweeper.params") or {}) if k not in keys]
