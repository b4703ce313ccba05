"""The training loop, readable in one screen: train_one_epoch(), evaluate() and fit().

Every epoch starts from a seed derived from (seed, model, epoch), so a run resumed from the
checkpoint of epoch k draws the same batches and dropout masks as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import nn
from tqdm import tqdm

from kdrun import Interrupted, KdrunError, distributed
from kdrun.checkpoint import load_checkpoint, save_checkpoint
from kdrun.loggers.console import EpochLog
from kdrun.methods.base import Distiller
from kdrun.models import logits_of
from kdrun.speed import OptimizerStep, grad_scaler
from kdrun.step import TrainStep, reports_top5, topk_correct, use_graphs, warm_up

log = logging.getLogger(__name__)


def reseed(seed: int, role: str, epoch: int = 0) -> None:
    """Seeds every RNG from (seed, role, epoch) alone: what happened earlier in the process (a
    teacher trained or loaded from the cache, a resumed run) never changes what comes next.
    Epoch 0 is the model's initialisation."""
    digest = hashlib.sha256(f"{seed}/{role}/{epoch}".encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def lr_factor(schedule: str, epoch: int, epochs: int, milestones=(), gamma: float = 0.1, warmup_epochs: int = 0,
              progress: float = 1.0) -> float:
    """The learning-rate multiplier of a (1-based) epoch, `progress` (0..1] of the way through it: a
    pure function, so resuming needs no state. A warmup ramps linearly from 0 to 1 over the first
    `warmup_epochs`, per step, and multiplies the schedule."""
    factor = 1.0
    if schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
    elif schedule == "multistep":
        factor = gamma ** sum(epoch > m for m in milestones)
    if warmup_epochs and epoch <= warmup_epochs:
        factor *= min(1.0, (epoch - 1 + progress) / warmup_epochs)
    return factor


def make_optimizer(recipe, params, capturable: bool = False) -> torch.optim.Optimizer:
    """`capturable`: the update may be recorded in a CUDA graph (Adam's step count then lives on the
    device; SGD's update is capturable as it is)."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[recipe.optimizer]
    return cls(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **({"capturable": True} if capturable else {}))


def make_train_step(model: nn.Module, recipe, device: torch.device, graphs: bool = False) -> TrainStep:
    """The training step of `model` as a run takes it: `recipe`'s optimizer over what requires
    gradients (capturable when `graphs`: kdrun.step.use_graphs decides), fp16's loss scaler and the
    recipe's grad_clip (kdrun.speed.OptimizerStep), on the model wrapped for DDP where several
    processes train (kdrun.distributed.wrap). `step.update.optimizer` is the optimizer."""
    optimizer = make_optimizer(recipe, [p for p in model.parameters() if p.requires_grad], capturable=graphs)
    update = OptimizerStep(optimizer, grad_scaler(getattr(model, "amp_dtype", None), device), recipe.get("grad_clip"))
    return TrainStep(distributed.wrap(model), update, device, graphs=graphs)


class MetricsLog:
    """metrics.jsonl: one JSON object per line, one line per model per epoch, written by rank 0 alone
    under DDP. fit() writes an epoch's
    lines after the checkpoint that holds them, and a resume rewinds the file to that checkpoint, so
    the lines and the checkpoints agree whatever moment a run was killed at. Every line also goes to
    the run's trackers (kdrun.loggers.Trackers: TensorBoard, MLflow, ...), after it is on disk."""

    def __init__(self, path: Path, trackers=None):
        self.path = Path(path)
        self.trackers = trackers

    def write(self, record: dict) -> None:
        if not distributed.is_main():
            return
        cut = False  # a line cut short by a killed process is ended first, so it cannot swallow this one
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        with self.path.open("a") as f:
            f.write(("\n" if cut else "") + json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log_metrics(record)

    def read(self) -> list[dict]:
        """Every complete line; a line cut short (a killed run) is skipped."""
        from kdrun.sweep import read_lines

        return read_lines(self.path)

    def rewind(self, models: Iterable[str], epoch: int, last: Optional[list] = None) -> None:
        """Makes the lines of `models` agree with a checkpoint of `epoch`: later lines (written
        before a crash) go, and its own lines of `epoch` (`last`, kept in the checkpoint) are put
        back when given, in case the crash came between the checkpoint and them."""
        if not distributed.is_main():
            return
        models = set(models)
        until = epoch - 1 if last is not None else epoch
        kept = [r for r in self.read() if not (r["model"] in models and r["epoch"] > until)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in [*kept, *(last or [])]))


def train_one_epoch(
    model: Distiller,
    loader: Iterable,
    optimizer: torch.optim.Optimizer | OptimizerStep,
    device: torch.device,
    desc: str,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    step: Optional[TrainStep] = None,
) -> dict:
    """One pass over `loader`. `optimizer` is a torch optimizer or an OptimizerStep (fp16 loss scaling,
    gradient clipping, a per-step learning rate); `step` (kdrun.step.TrainStep: eager, or replayed as
    a CUDA graph) trains on each batch and keeps the epoch's sums on the device: no host sync per step."""
    update = optimizer if isinstance(optimizer, OptimizerStep) else OptimizerStep(optimizer)
    step = step or TrainStep(model, update, device)
    step.begin_epoch()
    model.train()
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if progress else True)
    for i, (x, y, *extras) in enumerate(bar):
        if distributed.any_rank(should_stop()):  # every process stops at the same step
            raise Interrupted(desc)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if len(y) < 2:  # batch norm cannot train on a single image (a last, tiny batch)
            continue
        out = step(x, y, extras[0] if extras else {})
        if i % 25 == 0 and not bar.disable:
            _, correct, _, seen = step.totals()
            bar.set_postfix(loss=f"{out['loss'].item():.4f}", acc=f"{next(iter(correct.values())).item() / seen:.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the time the work took, not the time it took to launch it
    seconds = time.perf_counter() - start
    sums, correct, correct5, seen = distributed.sum_across(*(dict(t) if isinstance(t, dict) else t
                                                            for t in step.totals()))
    if seen == 0:
        raise KdrunError("the training split has fewer than 2 images: raise dataset.train_subset or lower dataset.val_split")
    metrics = {f"train/{k}": (v / seen).item() for k, v in sums.items()}
    if not math.isfinite(metrics["train/loss"]):
        raise KdrunError(f"{desc}: the training loss became {metrics['train/loss']}; lower the learning rate (lr)")
    metrics.update({f"train/{prefix}/acc" if prefix else "train/acc": c.item() / seen for prefix, c in correct.items()})
    metrics.update({f"train/{prefix}/acc5" if prefix else "train/acc5": c.item() / seen for prefix, c in correct5.items()})
    metrics.update({"seconds": seconds, "images_per_sec": seen / seconds})
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device) -> dict:
    """Accuracy, error count and mean cross-entropy of `model` over a loader; top-5 accuracy (`acc5`) too
    with more than 10 classes."""
    model.eval()
    correct, correct5, n, loss = 0, 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = logits_of(model(x))
        loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        correct5 += topk_correct(logits, y).item() if reports_top5(logits) else 0
        n += len(y)
    # Each process evaluated its shard: sums and counts over all of them.
    correct, correct5, n, loss = distributed.sum_across(correct, correct5, n, loss)
    top5 = {"acc5": correct5 / n} if reports_top5(logits) else {}
    return {"acc": correct / n, **top5, "errors": n - correct, "images": n, "loss": loss / n}


@dataclass
class FitResult:
    best_epoch: int
    best_val_acc: Optional[float]  # None without a validation split (the last epoch is kept)
    best_path: Path


def _member_record(train: dict, name: Optional[str]) -> dict:
    """One model's share of a trainer's epoch metrics: its own `train/<name>/...` keys, unprefixed
    (`name` None: the keys that have no model prefix)."""
    if name is None:
        return {k: v for k, v in train.items() if k.count("/") <= 1}
    prefix = f"train/{name}/"
    return {"train/" + k[len(prefix):]: v for k, v in train.items() if k.startswith(prefix)}


def fit(
    model: nn.Module,
    data,
    recipe,
    epochs: int,
    device: torch.device,
    ckpt_dir: Path,
    role: str,
    metrics: MetricsLog,
    seed: int,
    resume: bool,
    config_digest: str,
    meta: Optional[dict] = None,
    train_extras: Optional[dict] = None,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    members: Optional[Dict[str, Tuple[nn.Module, dict]]] = None,
):
    """Trains everything in `model` that requires gradients (model.student and any KD adapters) for
    `epochs`, keeping `<role>_last.pt` (every epoch, for resuming) and `<role>_best.pt` (best
    validation accuracy). `meta` (architecture, classes, channels) goes into both files, so that
    either can be loaded as a teacher checkpoint. `train_extras` are per-image tensors handed to the
    model with each batch (cached teacher logits). Returns a FitResult.

    `members` ({name: (module, meta)}) is for a trainer of several models at once (online peers,
    early-exit heads) whose outputs carry a `<name>/` prefix: each member gets its own metrics line
    (model=<name>), validation accuracy and `<name>_best.pt`; `<role>_last.pt` holds them all.
    Returns {name: FitResult} then."""
    single = members is None
    if single:
        members = {role: (model.student, meta or {})}
    last_path = ckpt_dir / f"{role}_last.pt"
    best_paths = {name: ckpt_dir / f"{name}_best.pt" for name in members}
    step = make_train_step(model, recipe, device, use_graphs(model, data, device))
    # `trainer`: DDP's wrapper under torchrun/SLURM, else `model`, which stays the one saved and evaluated.
    trainer, update, optimizer = step.model, step.update, step.update.optimizer
    first_epoch = 1
    best: Dict[str, Tuple[int, Optional[float]]] = {name: (0, None) for name in members}
    if resume and last_path.exists():
        state = load_checkpoint(last_path, f"resume ({role})")
        if state["config_digest"] != config_digest:
            raise KdrunError(
                f"resume=true: {last_path} was written by a run with another config; resume with the same "
                "overrides as the interrupted run, or start a new run directory"
            )
        model.student.load_state_dict(state["model"])
        model.methods.load_state_dict(state["methods"])
        optimizer.load_state_dict(state["optimizer"])
        if update.scaler is not None and "scaler" in state:
            update.scaler.load_state_dict(state["scaler"])
        first_epoch, best = state["epoch"] + 1, {name: tuple(b) for name, b in state["best"].items()}
        metrics.rewind(members, state["epoch"], state.get("lines"))
        log.info("%s: resuming after epoch %d of %d (%s)", role, state["epoch"], epochs, last_path)
    elif resume:
        metrics.rewind(members, 0)  # lines of a start that saved no checkpoint
    train_loader = data.loader("train", recipe.batch_size, shuffle=True, augment=recipe.augment, extras=train_extras,
                               exclude=recipe.exclude_classes)
    val_loader = data.loader("val", 1024) if data.has_val else None
    epoch_log = EpochLog(epochs)
    # CUDA's one-time costs, paid here and reported, not hidden in the first epoch's time.
    warm_s = warm_up(step, train_loader, [m for m, _ in members.values()], val_loader, device) if first_epoch <= epochs else 0

    for epoch in range(first_epoch, epochs + 1):
        reseed(seed, role, epoch)
        steps, warmup = len(train_loader), recipe.get("warmup_epochs", 0)

        def lr_at(step: int, epoch=epoch) -> float:
            return recipe.lr * lr_factor(recipe.schedule, epoch, epochs, recipe.milestones, recipe.gamma, warmup,
                                         (step + 1) / steps)

        lr = lr_at(steps - 1)  # the epoch's rate (its last step's, during a warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        update.start_epoch(lr_at if warmup and epoch <= warmup else None)
        train = train_one_epoch(trainer, train_loader, update, device, f"{role} {epoch}/{epochs}", progress,
                                should_stop, step)
        timing = {k: train.pop(k) for k in ("seconds", "images_per_sec")}
        lines = []
        for name, (module, member_meta) in members.items():
            record = {"model": name, "epoch": epoch, "lr": lr, **_member_record(train, None if single else name),
                      **timing}
            if warm_s and epoch == first_epoch:  # paid before this epoch's clock started
                record["cuda_warmup_seconds"] = round(warm_s, 2)
            improved = True
            if val_loader is not None:
                val = evaluate(module, val_loader, device)
                record.update({"val/acc": val["acc"], **({"val/acc5": val["acc5"]} if "acc5" in val else {}),
                               "val/loss": val["loss"]})
                improved = best[name][1] is None or val["acc"] > best[name][1]
            if improved:
                best[name] = (epoch, record.get("val/acc"))
                save_checkpoint({**member_meta, "model": module.state_dict(),
                                 **({"methods": model.methods.state_dict()} if single else {}),
                                 "epoch": epoch, "val_acc": best[name][1]}, best_paths[name])
            lines.append(record)
        save_checkpoint(
            {**(meta or {}), "model": model.student.state_dict(), "methods": model.methods.state_dict(),
             "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best, "config_digest": config_digest,
             "lines": lines, **({"scaler": update.scaler.state_dict()} if update.scaler is not None else {})},
            last_path,
        )
        for name, record in zip(members, lines):  # after the checkpoint that holds them (see MetricsLog)
            metrics.write(record)
            epoch_log(record, best[name])
    distributed.barrier()  # rank 0's files are on disk before any process reads them
    results = {name: FitResult(best_epoch=best[name][0], best_val_acc=best[name][1], best_path=best_paths[name])
               for name in members}
    return results[role] if single else results
