"""The `kdrun` command: Hydra composes the config, run(cfg) does the work. Nothing else lives here."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from kdrun import Interrupted, KdrunError, distributed
from kdrun.config import register_configs

log = logging.getLogger(__name__)


def _config_dir() -> str:
    packaged = Path(__file__).parent / "configs"  # an installed wheel carries them here
    return str(packaged if packaged.is_dir() else Path(__file__).parent.parent / "configs")


register_configs()


def _user_error(e: Exception) -> Optional[str]:
    """The one line for a mistake the user can fix; None for anything else (our bug, NaN, OOM...)."""
    if isinstance(e, KdrunError):
        return str(e)
    if isinstance(e, MissingMandatoryValue):
        key = getattr(e, "full_key", None) or "a required setting"
        return f"{key} has no value (???): set it on the command line, e.g. {key}=..."
    return distributed.peer_failure(e)  # under DDP: another process failed first (its own line)


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kdrun.report import print_summary
    from kdrun.run import record_failure, run

    try:
        summary = run(cfg)
    except Interrupted:  # Ctrl-C stops a whole sweep too: SystemExit is not caught by Hydra's launchers
        sys.exit("kdrun: interrupted; the last completed epoch is saved. Continue it with the same command plus "
                 "resume=true hydra.run.dir=<this run's directory> (or hydra.sweep.dir=<the sweep's>)")
    except Exception as e:
        line = _user_error(e)
        distributed.report_failure(line or f"{type(e).__name__}: {e}".splitlines()[0])
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            if line is None:
                raise  # a traceback is for our bugs
            sys.exit(f"kdrun: error: {line}")
        # One job of a sweep failing (a bad combination, a NaN loss, out of memory) must not stop the
        # others: its run directory records why, and the sweep's summary lists it as failed.
        if line is None:
            log.exception("the job failed")
            line = f"{type(e).__name__}: {e}"
        line = (line.strip().splitlines() or ["(no message)"])[0]
        record_failure(Path(HydraConfig.get().runtime.output_dir), line)
        log.error("kdrun: job failed: %s", line)
        return None  # not a number: Optuna records the trial as failed and goes on
    if summary["status"] != "ok":  # a dry run printed its layer table already
        return None
    if distributed.is_main():
        print_summary(summary)
    return summary["student"]["best_val_acc"]  # what a sweeper may maximise: never the test set


def main() -> None:
    # Under torchrun/srun, the processes other than rank 0 compose the same config but make no run
    # directory of their own: rank 0's is theirs (kdrun.distributed).
    sys.argv[1:] = distributed.follower_overrides(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
