"""Weights & Biases: offline unless the user is logged in (a W&B run in `<run_dir>/wandb/`, uploaded
later with `wandb sync`); a sweep's jobs are one W&B group. Each model's curves are plotted against
its own epoch (`<model>/epoch`): a teacher's epochs come before the student's, and W&B's own step
only counts up."""
from __future__ import annotations

import netrc
import os
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

from kdrun.loggers import Logger, RunInfo, numbers, require, summary_metrics


def logged_in() -> bool:
    """An API key in the environment, or the one `wandb login` keeps in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(Logger):
    def __init__(self, project: str, entity: Optional[str], mode: Optional[str], group: Optional[str],
                 tags: List[str], *, run: RunInfo):
        wandb = require("wandb", "wandb")
        self.mode = mode or os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")
        self.wandb, self.run_dir = wandb, run.run_dir
        previous = run.read_state("wandb")
        # console="off": Hydra's log already has the terminal's lines, and W&B must not wrap its streams.
        group = group or (run.sweep_dir[-128:] if run.sweep_dir else None)  # W&B takes 128 characters
        self.wb = wandb.init(project=project, entity=entity, mode=self.mode, group=group, name=run.name,
                             tags=list(tags), dir=str(run.run_dir), id=previous.get("id"),
                             resume="allow" if previous else None,
                             settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        run.write_state("wandb", {"id": self.wb.id})
        self.models: set = set()

    def describe(self) -> str:
        if self.mode == "offline":
            folder = os.path.dirname(self.wb.dir)  # wb.dir is the run's files/ folder
            return f"offline in {folder}  (upload: wandb sync {folder})"
        return f"{self.mode}, {getattr(self.wb, 'url', None) or self.wb.id}"

    def log_params(self, params: Dict[str, Any]) -> None:
        self.wb.config.update(params, allow_val_change=True)

    def log_metrics(self, record: dict) -> None:
        model = record["model"]
        if model not in self.models:
            self.wb.define_metric(f"{model}/*", step_metric=f"{model}/epoch")
            self.models.add(model)
        self.wb.log({f"{model}/epoch": record["epoch"], **{f"{model}/{k}": v for k, v in numbers(record).items()}})

    def log_summary(self, summary: dict) -> None:
        self.wb.summary.update(summary_metrics(summary))
        if (self.run_dir / "summary.json").is_file():
            artifact = self.wandb.Artifact(f"summary-{self.wb.id}", type="summary")
            artifact.add_file(str(self.run_dir / "summary.json"))
            self.wb.log_artifact(artifact)

    def close(self, status: str) -> None:
        self.wb.finish(exit_code=0 if status == "FINISHED" else 1)
