"""run(cfg): build the parts, hand them to the scheme, write the outputs. Tests call it directly."""
from __future__ import annotations

import contextlib
import json
import logging
import platform
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

import kdrun
from kdrun import KdrunError, baseline, deploy, distributed, rundir
from kdrun.checkpoint import write_json_atomic
from kdrun.config import ce_weight, check, check_data, check_overrides
from kdrun.data import build_data
from kdrun.engine import MetricsLog
from kdrun.loggers import Trackers, open_trackers, run_info
from kdrun.loggers.console import chance_level, run_header
from kdrun.report import summary_rows
from kdrun.rundir import config_digest
from kdrun.schemes import RunContext, get_scheme

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise KdrunError("device=mps: MPS is not available on this machine; use device=auto or device=cpu")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise KdrunError(f"device={name}: write a CUDA device as cuda or cuda:N (N = 0, 1, ...)")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise KdrunError(f"device={name}: no CUDA device is visible here; use device=auto or device=cpu")
        if index and int(index) >= count:
            raise KdrunError(f"device={name}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
        return torch.device(name)
    raise KdrunError(f"device={name}: unknown; choose auto, cpu, cuda, cuda:N or mps")


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set a flag that the training loop checks at every step; the epoch in progress
    is dropped and the last completed one is already on disk. A second Ctrl-C aborts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # e.g. a launcher's worker thread
        yield flag.is_set
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        flag.set()
        signal.signal(signum, previous[signum])
        log.warning("%s received: stopping; the last completed epoch is saved", signal.Signals(signum).name)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield flag.is_set
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _git_commit() -> Optional[str]:
    try:
        here = Path(kdrun.__file__).parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    import hydra
    import torchvision

    return {"kdrun": kdrun.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__}


def _overrides() -> list:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (a test calling run() directly)
        return []


def run(cfg: DictConfig, run_dir: Optional[Path] = None) -> dict:
    """Runs one experiment into `run_dir` (Hydra's output directory by default); returns the summary.
    The directory is checked before anything is written or trained in it (kdrun.rundir)."""
    check(cfg)  # a bad value is refused before the run directory is touched
    check_overrides(cfg, _overrides())
    # Under torchrun/SLURM: one process per device, joined here; rank 0's run directory is everyone's,
    # and rank 0 alone claims it, checks a resume and looks for a shared baseline: the others follow.
    device = distributed.init(pick_device(cfg.device), cfg.dist_timeout_s, cfg.sync_bn)
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir = Path(distributed.from_main(str(run_dir)))
    main = distributed.is_main()
    if not main:
        cfg.progress = False  # one progress bar: rank 0's
    digest = config_digest(cfg)
    opened = rundir.opened(run_dir, cfg.resume, cfg.dry_run, digest, _overrides()) if main else contextlib.nullcontext()
    with opened as previous:
        previous = distributed.from_main(previous)
        if previous is not None:  # a resume of a complete run
            return previous
        with baseline.shared(cfg, run_dir) if main else contextlib.nullcontext() as same:
            if distributed.from_main(same is not None):  # an equal kd=none job of the sweep finished already
                return distributed.from_main(baseline.share(same, cfg, run_dir, _overrides(), digest) if main else None)
            return _run(cfg, run_dir, digest, device)


def _run(cfg: DictConfig, run_dir: Path, digest: str, device: torch.device) -> dict:
    summary_path = run_dir / "summary.json"
    if not cfg.dry_run:
        # Its presence means the run finished: a stale one (a failure) must not outlive this start.
        summary_path.unlink(missing_ok=True)

    started = time.time()
    for line in run_header(cfg, run_dir, device):
        log.info(line)
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.dataset, cfg.data_dir, device)
    check_data(cfg, data.num_classes)
    log.info("data: %s, %s train / %s val / %s test images, %d classes, on %s", data.name, data.sizes["train"],
             data.sizes["val"], data.sizes["test"], data.num_classes, device)
    # Before any training: a tracker whose package is missing stops the run here, with one line.
    # Under DDP rank 0 alone reports to the trackers (none on the others).
    trackers = Trackers() if cfg.dry_run or not distributed.is_main() else open_trackers(cfg, run_info(run_dir))
    with trackers, stop_on_signals() as should_stop:
        ctx = RunContext(cfg=cfg, run_dir=run_dir, device=device, data=data,
                         metrics=MetricsLog(run_dir / "metrics.jsonl", trackers), config_digest=digest,
                         should_stop=should_stop)
        models = get_scheme(cfg.scheme.name)(ctx)
    modules = models.pop("modules", {})  # the trained models themselves, for the deployment report
    if cfg.dry_run:
        from kdrun.report import print_layers

        if distributed.is_main():
            print_layers(models["layers"], models.get("teacher"))
        return {"status": "dry_run", **models}

    if cfg.deploy_report and distributed.is_main():  # under DDP, rank 0 measures for the summary it writes
        measuring = time.time()
        deploy.report(models, modules, (data.in_channels, data.image_size, data.image_size), device)
        models["compression"] = deploy.compression(models.get("teacher"), models.get("student"))
        log.info("deployment report: %d model(s) measured in %.1f s", len({id(m) for m in modules.values()}),
                 time.time() - measuring)
    del modules
    summary = {
        "status": "ok",
        **models,
        "kd": list(cfg.kd.keys()),
        "scheme": cfg.scheme.name,
        "dataset": cfg.dataset.name,
        "T": cfg.T,
        "alpha": cfg.alpha,
        "lambda": ce_weight(cfg),
        "seed": cfg.seed,
        "device": str(device),
        "world_size": distributed.world_size(),
        "wall_time_s": round(time.time() - started, 2),
        "run_dir": str(run_dir.resolve()),
        "overrides": _overrides(),
        "config_digest": digest,
        **({"baseline_digest": baseline.baseline_digest(cfg)} if not cfg.kd else {}),
        "versions": _versions(),
        "git_commit": _git_commit(),
    }
    write_json_atomic(summary_path, summary)
    for name, info in summary_rows(summary).items():  # an offline teacher was checked before the student trained
        if not (cfg.scheme.name == "offline" and name.startswith("teacher")):
            chance_level(name, info.get("test_acc"), data.num_classes)
    trackers.finish(summary)
    return summary


def record_failure(run_dir: Path, error: str) -> Optional[dict]:
    """A run that raised: its summary.json says `failed` and why, so a sweep's summary (and
    kdrun-report) lists it and `resume=true` runs it again. A complete run's summary is never
    replaced (a resume that failed does not undo its results); a full disk only loses the record."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("status") == "ok":
            return None
    summary = {"status": "failed", "error": error, "run_dir": str(run_dir.resolve()), "overrides": _overrides()}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, summary)
    except (OSError, KdrunError) as e:
        log.debug("could not record the failure in %s: %s", path, e)  # the error itself is the one line
        return None
    return summary
