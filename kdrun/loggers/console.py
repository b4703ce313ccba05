"""What the terminal and kdrun.log say while a run trains: one line per model per epoch (as timm and
Lightning print), the lines that open a run, and the warnings for a run that has gone wrong.

Everything goes through Python's logging, which Hydra sends to the terminal and to kdrun.log, so a
run under nohup, SLURM or a joblib sweep leaves the same story in its log as on a screen.
"""
from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

log = logging.getLogger("kdrun.epoch")

# A loss above this many times its first value (and above this many nats) is a run going wrong.
DIVERGED_RATIO = 10.0
CHANCE_MARGIN = 1.2  # accuracy below 1.2 / classes: no better than guessing


def _num(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3g}"


def epoch_line(record: dict, epochs: int, best: Optional[Tuple[int, Optional[float]]] = None) -> str:
    """`student  3/20  loss 0.4123 (ce 0.1234, hinton 0.2889)  acc 91.23%  val 92.10% (best 92.10% @3)
    val loss 0.2345  lr 0.0412  2.1 s  28,512 img/s`: a metrics line as a person reads it. Keys this
    function does not know (a new method's terms are known by their `loss_` prefix) come at the end."""
    rest = {k: v for k, v in record.items() if k not in ("model", "epoch")}
    parts = [f"{record['model']:<8} {record['epoch']:>{len(str(epochs))}}/{epochs}"]
    if "train/loss" in rest:
        terms = [f"{k[len('train/loss_'):]} {_num(rest.pop(k))}" for k in list(rest) if k.startswith("train/loss_")]
        parts.append(f"loss {_num(rest.pop('train/loss'))}" + (f" ({', '.join(terms)})" if terms else ""))
    for key in [k for k in rest if k.startswith("train/") and k.endswith("acc")]:
        parts.append(f"{key[len('train/'):]} {100 * rest.pop(key):.2f}%")
    if "val/acc" in rest:
        text = f"val {100 * rest.pop('val/acc'):.2f}%"
        if best and best[1] is not None:
            text += f" (best {100 * best[1]:.2f}% @{best[0]})"
        parts.append(text)
    if "val/loss" in rest:
        parts.append(f"val loss {_num(rest.pop('val/loss'))}")
    tail = [f"lr {_num(rest.pop('lr'))}" if "lr" in rest else None,
            f"{rest.pop('seconds'):.1f} s" if "seconds" in rest else None,
            f"{rest.pop('images_per_sec'):,.0f} img/s" if "images_per_sec" in rest else None]
    parts += [f"{k} {_num(v)}" for k, v in rest.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return "  ".join(parts + [t for t in tail if t])


def runaway(record: dict, first: dict) -> Dict[str, Tuple[float, float]]:
    """The losses of `record` that have left their first value (`first`, the same model's first line
    of this session) far behind: {key: (value, first value)}. Non-finite counts as runaway."""
    out = {}
    for key in ("train/loss", "val/loss"):
        value, start = record.get(key), first.get(key)
        if value is None or start is None:
            continue
        if not math.isfinite(value) or value > DIVERGED_RATIO * max(start, 1.0):
            out[key] = (value, start)
    return out


class EpochLog:
    """One line per model per epoch of one fit(), and one warning per model and loss that runs away."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.first: Dict[str, dict] = {}
        self.warned: set = set()

    def __call__(self, record: dict, best: Optional[Tuple[int, Optional[float]]] = None) -> None:
        log.info(epoch_line(record, self.epochs, best))
        model = record["model"]
        for key, (value, start) in runaway(record, self.first.setdefault(model, record)).items():
            if (model, key) not in self.warned:
                self.warned.add((model, key))
                log.warning("%s: %s is %s at epoch %d, against %s at its first epoch: training is diverging; "
                            "lower the learning rate (lr of its recipe) or check the data", model, key, _num(value),
                            record["epoch"], _num(start))


def chance_level(name: str, acc: Optional[float], num_classes: int) -> bool:
    """Warns when a model's test accuracy is no better than guessing among `num_classes`."""
    if acc is None or num_classes < 2 or acc >= CHANCE_MARGIN / num_classes:
        return False
    logging.getLogger("kdrun").warning(
        "%s ends at chance level: %.2f%% test accuracy with %d classes (guessing: %.2f%%). It learned nothing; check "
        "its lr, epochs and the data (a few epochs on a tiny train_subset are not enough)", name, 100 * acc,
        num_classes, 100 / num_classes)
    return True


def run_header(cfg, run_dir: Path, device) -> list[str]:
    """The lines that open a run: where it writes, on what, and the choices that define it."""
    from kdrun.config import student_epochs

    kd = "+".join(cfg.kd) or "none"
    models = f"student {cfg.student.name}"
    if cfg.scheme.name == "offline" and cfg.kd:
        models = f"teacher {cfg.teacher.name} -> {models}"
    elif cfg.scheme.name == "online" and cfg.scheme.peers is None:
        models = f"teacher {cfg.teacher.name} <-> {models}"
    lines = [f"run directory: {Path(run_dir).resolve()}",
             f"device: {device}",
             f"{models} ({student_epochs(cfg)} epochs), kd={kd}, T={cfg.T}, alpha={cfg.alpha}, "
             f"scheme={cfg.scheme.name}, dataset={cfg.dataset.name}, seed={cfg.seed}"]
    return lines  # the resume point, if any, is logged by the engine ("resuming after epoch k")


def teacher_line(info: Optional[dict]) -> str:
    """Where the teacher comes from (cache hit, trained, checkpoint, pretrained, ensemble) and how good it is."""
    where = {"cache": f"from the cache ({Path(info.get('path', '')).parent})",
             "trained": f"trained into the cache ({Path(info.get('path', '')).parent})",
             "checkpoint": f"from the checkpoint {info.get('path')}",
             "ensemble": f"the {info.get('combine')} of {len(info.get('members') or {})} members"}.get(info["source"],
                                                                                             info["source"])
    acc = info.get("test_acc")
    return f"teacher {info['arch']}: {where}" + (f", test accuracy {100 * acc:.2f}%" if acc is not None else "")


def plain_text(draw: Callable) -> str:
    """What `draw(console)` prints with rich (a table), as plain text at a fixed width, for a log file."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160, color_system=None)
    draw(console)
    return console.file.getvalue()


def to_log_files(text: str) -> None:
    """Writes `text` into the log files (kdrun.log) only: for what the terminal was shown another way
    (the rich results table)."""
    record = logging.LogRecord("kdrun", logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
