"""Shared test helpers: compose configs the way the CLI does, on tiny data, in temporary folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kdrun.config import register_configs

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SHARED = ROOT.parent / "shared" / "datasets"
DATA_DIR = Path(os.environ.get("KDRUN_DATA_DIR") or SHARED)
HAS_MNIST = (DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"no MNIST under {DATA_DIR} (set KDRUN_DATA_DIR)")

register_configs()

# Small, fast settings that every test run starts from (and no test downloads anything by accident).
# The deployment report (on by default) is measured only by the tests that check it
# (deploy_report=true): timing CNNs would cost seconds a run.
TINY = ["progress=false", "dataset.download=false", "teacher.epochs=1", "epochs=1", "teacher.batch_size=64", "student.batch_size=64",
        "deploy_report=false"]


def make_cfg(*overrides: str, tmp: Path | None = None):
    """The composed config the CLI would get for these overrides (plus TINY and a private cache)."""
    extra = [f"data_dir={DATA_DIR}"]
    if tmp is not None:
        extra.append(f"teacher_cache={tmp / 'teachers'}")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=[*TINY, *extra, *overrides])


def kdrun_cli(*args: str, cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Runs `python -m kdrun ARGS` as a user would, from another working directory."""
    env = {**os.environ, "KDRUN_DATA_DIR": str(DATA_DIR)}
    proc = subprocess.run([sys.executable, "-m", "kdrun", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"kdrun {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc
