"""The `kdrun` command: Hydra composes the config, run(cfg) does the work. Nothing else lives here."""
from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

import kdrun
from kdrun import Interrupted, KdrunError, distributed
from kdrun.config import config_dir, register_configs

log = logging.getLogger(__name__)


register_configs()


def _config_dir() -> str:  # bench.py composes the config with it (elsewhere: kdrun.config.config_dir)
    return str(config_dir())


def _user_error(e: Exception) -> Optional[str]:
    """The one line for a mistake the user can fix; None for anything else (our bug, NaN, OOM...)."""
    if isinstance(e, KdrunError):
        return str(e)
    if isinstance(e, MissingMandatoryValue):
        key = getattr(e, "full_key", None) or "a required setting"
        return f"{key} has no value (???): set it on the command line, e.g. {key}=..."
    return distributed.peer_failure(e)  # under DDP: another process failed first (its own line)


def _resume_command() -> str:
    """The user's own command, with resume=true and the real directory of this run (or sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    where = Path(hc.sweep.dir if multirun else hc.runtime.output_dir).resolve()
    program, args = Path(sys.argv[0]).name, sys.argv[1:]
    if program == "__main__.py":
        program = "python -m kdrun"
    elif program != "kdrun" and multirun:  # a launcher's worker process: the sweep's own record
        recorded = OmegaConf.load(where / "multirun.yaml").hydra.overrides
        program, args = "kdrun", ["-m", *(o for o in recorded.hydra if not o.startswith("hydra.mode=")), *recorded.task]
    args = [a for a in args if not a.startswith(("resume=", f"{key}="))]
    return " ".join([program, *map(shlex.quote, args), "resume=true", f"{key}={shlex.quote(str(where))}"])


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kdrun.loggers.console import plain_text, to_log_files
    from kdrun.report import print_summary
    from kdrun.rundir import Refused
    from kdrun.run import record_failure, run

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summary = run(cfg)
    except Interrupted:  # Ctrl-C stops a whole sweep too: SystemExit is not caught by Hydra's launchers
        sys.exit(f"kdrun: interrupted; the last completed epoch is saved. Continue with:\n  {_resume_command()}")
    except Exception as e:
        line = _user_error(e)
        first = ((line or f"{type(e).__name__}: {e}").strip().splitlines() or ["(no message)"])[0]
        distributed.report_failure(first)  # under DDP: the other processes end with this line
        refused = isinstance(e, Refused)
        if not refused:  # a refused run changed nothing in the directory, and records nothing there
            record_failure(Path(HydraConfig.get().runtime.output_dir), first)
        if not multirun:
            if line is None:
                raise  # a traceback is for our bugs
            sys.exit(f"kdrun: error: {line}")
        # One job of a sweep failing (a bad combination, a NaN loss, out of memory) must not stop the
        # others: its run directory records why, and the sweep's summary lists it as failed.
        if line is None:
            log.exception("the job failed")
        log.error("kdrun: job %s: %s", "refused" if refused else "failed", first)
        return None  # not a number: Optuna records the trial as failed and goes on
    if summary["status"] != "ok":  # a dry run printed its layer table already
        return None
    if distributed.is_main():  # one table: rank 0's
        print_summary(summary)
        # kdrun.log tells the whole story: the table too
        to_log_files("results:\n" + plain_text(lambda console: print_summary(summary, console)))
    return summary["student"]["best_val_acc"]  # what a sweeper may maximise: never the test set


def _help() -> str:
    """`kdrun --help`: the groups a user selects and their options (not `model`, which holds what
    the teacher and student groups share), and where the other settings are."""
    root = config_dir()
    groups = {g: sorted(p.stem for p in (root / g).glob("*.yaml"))
              for g in ("teacher", "student", "dataset", "kd", "scheme", "logger", "pair", "experiment")
              if (root / g).is_dir()}
    notes = {"teacher": "  (several: teacher=[a,b] is an ensemble)", "kd": "  (several: kd=[hinton,at])",
             "logger": "  (several: logger=[tensorboard,mlflow])",
             "pair": "  (a pair of the CIFAR-100 benchmark: teacher, student and its per-pair settings)",
             "experiment": "  (a preset: +experiment=NAME)"}
    lines = [f"kdrun {kdrun.__version__}: knowledge distillation experiments (PyTorch, Hydra)", "",
             "usage: kdrun [GROUP=OPTION ...] [KEY=VALUE ...] [-m] [--cfg job] [--version] [--hydra-help]", "",
             "Config groups (GROUP=OPTION):"]
    lines += [f"  {'+' if g == 'experiment' else ''}{g}: {', '.join(opts)}{notes.get(g, '')}" for g, opts in groups.items()]
    lines += ["", "Every setting is KEY=VALUE: T=8 alpha=0.5 teacher.lr=0.01 student.kwargs.dropout=0.3 "
              "dataset.train_subset=2000 ...",
              "  kdrun --cfg job ...    print the composed config (every key) and exit",
              "  kdrun -m T=1,2,4 ...   a sweep; resume=true continues a run or a sweep",
              "  kdrun --hydra-help     Hydra's own flags", "", "README.md describes every setting."]
    return "\n".join(lines)


def main() -> None:
    args = sys.argv[1:]
    if "--version" in args:
        print(f"kdrun {kdrun.__version__}")
        return
    if "--help" in args or "-h" in args:
        print(_help())
        return
    # Under torchrun/srun, the processes other than rank 0 compose the same config but make no run
    # directory of their own: rank 0's is theirs (kdrun.distributed).
    sys.argv[1:] = distributed.follower_overrides(args)
    try:
        _main()
    except KeyboardInterrupt:  # Ctrl-C before training began (or after it ended): nothing to save
        sys.exit("kdrun: interrupted")


if __name__ == "__main__":
    main()
