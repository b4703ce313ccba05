"""The `kdrun` command: Hydra composes the config, run(cfg) does the work. Nothing else lives here."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from kdrun import Interrupted, KdrunError
from kdrun.config import register_configs


def _config_dir() -> str:
    packaged = Path(__file__).parent / "configs"  # an installed wheel carries them here
    return str(packaged if packaged.is_dir() else Path(__file__).parent.parent / "configs")


register_configs()


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from kdrun.report import print_summary
    from kdrun.run import run

    try:
        summary = run(cfg)
    except KdrunError as e:
        sys.exit(f"kdrun: error: {e}")
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", None) or "a required setting"
        sys.exit(f"kdrun: error: {key} has no value (???): set it on the command line, e.g. {key}=...")
    except Interrupted:
        sys.exit("kdrun: interrupted; the last completed epoch is saved. Continue it with the same command plus "
                 "resume=true hydra.run.dir=<this run's directory>")
    if summary["status"] != "ok":  # a dry run printed its layer table already
        return None
    print_summary(summary)
    return summary["student"]["best_val_acc"]  # what a sweeper may maximise: never the test set


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
