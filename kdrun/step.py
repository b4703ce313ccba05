"""The training step — run eagerly, or replayed as one CUDA graph — and the epoch's running sums.

A small model's step on a GPU is bound by Python and kernel launches, not by the GPU: on an H200 the
MNIST 800-800 MLP at batch 128 issues ~60 launches per step, ~2 ms of host time for ~0.2 ms of device
time, and a ResNet-50 -> MobileNetV2 pair on 32x32 images ~1,700 launches, ~28 ms for ~5 ms (measured
with the PyTorch profiler, 2026-11-26). A CUDA graph records the whole step once — both models'
forward, the losses, backward, the optimizer's update and the epoch's metric sums — and replays it
with one launch, so the device sets the pace.

How (PyTorch's "whole network capture", torch.cuda.graphs): the first full batches run eagerly on a
side stream (warm-up: optimizer state, cuBLAS workspaces, autograd's streams), then one step is
captured and replayed for every later batch of that shape, its inputs copied into static buffers.
The learning rate is baked into the captured update, so a new one (the schedule's next epoch) is
captured anew after one more eager step; a per-step rate (a warmup) runs eagerly. A batch of another
size (the last, partial one) runs eagerly too, and so does every step where a capture failed (logged
once). `cuda_graphs` (kdrun.speed) says where graphs are tried at all.
"""
from __future__ import annotations

import copy
import logging
import time
from collections import defaultdict
from typing import Dict, Optional

import torch
from torch import nn

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps before the first capture (PyTorch's example uses 3)


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int = 5) -> torch.Tensor:
    """How many labels are among the k highest logits."""
    return (logits.topk(k, dim=1).indices == y[:, None]).any(1).sum()


def reports_top5(logits: torch.Tensor) -> bool:
    return logits.shape[1] > 10  # top-5 of 10 classes or fewer says little


def accumulate(out: Dict[str, torch.Tensor], y: torch.Tensor, sums: dict, correct: dict, correct5: dict) -> None:
    """Adds a step's weighted losses and correct predictions to the epoch's sums, in place and on the
    device (no host sync). A trainer of several models (online peers, early-exit heads) prefixes each
    model's keys with its name ("peer1/loss_ce", "peer1/logits"); a plain Distiller's keys have none."""
    n = len(y)
    losses = [key for key in out if key.rpartition("/")[2].startswith("loss")]
    # All of a step's losses in two kernels (foreach), whatever their number: the same sums as one by one.
    torch._foreach_add_([sums[key] for key in losses], torch._foreach_mul([out[key].detach() for key in losses], n))
    for key, value in out.items():
        prefix, _, term = key.rpartition("/")
        if term == "logits":
            correct[prefix].add_((value.detach().argmax(1) == y).sum())
            if reports_top5(value):
                correct5[prefix].add_(topk_correct(value.detach(), y))


class TrainStep:
    """One update of `model` per batch through `update` (kdrun.speed.OptimizerStep: backward, clipping,
    loss scaling, the optimizer's step), and the running sums of an epoch.

    `step(x, y, extras)` trains on a batch and returns its outputs ({'loss', 'loss_*', 'logits'...}),
    valid until the next call. `begin_epoch()` zeroes the sums; `totals()` gives (sums, correct,
    correct5, images seen). `graphs`: replay the step as a CUDA graph, on a CUDA `device` (use_graphs
    decides)."""

    def __init__(self, model: nn.Module, update, device: torch.device, graphs: bool = False):
        self.model, self.update, self.device, self.graphs = model, update, device, graphs
        self.sums: dict = defaultdict(lambda: torch.zeros((), device=device))
        self.correct: dict = defaultdict(lambda: torch.zeros((), device=device, dtype=torch.long))
        self.correct5: dict = defaultdict(lambda: torch.zeros((), device=device, dtype=torch.long))
        self.seen = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static: dict = {}
        self.static_out: Dict[str, torch.Tensor] = {}
        self.warm = 0  # eager warm-up steps done before the next capture
        self.batch_size: Optional[int] = None  # the shape the graph is captured for
        self.captures = 0
        self.captured_with: list = []
        self.failed = False

    def begin_epoch(self) -> None:
        for total in (*self.sums.values(), *self.correct.values(), *self.correct5.values()):
            total.zero_()
        self.seen = 0

    def totals(self):
        return self.sums, self.correct, self.correct5, self.seen

    def __call__(self, x: torch.Tensor, y: torch.Tensor, extras: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        self.seen += len(y)
        if self.batch_size is None:
            self.batch_size = len(y)
        if not self.graphs or self.failed or len(y) != self.batch_size or self.update.lr_at is not None:
            return self._eager(x, y, extras)
        if self.graph is not None and self._learning_rates() != self.captured_with:
            self.graph, self.static_out, self.warm = None, {}, 0  # the update baked into the graph is stale
        if self.graph is None:
            if self.warm < (WARMUP_STEPS if self.captures == 0 else 1):
                return self._warm_up(x, y, extras)
            if not self._capture(x, y, extras):
                return self._eager(x, y, extras)
        else:
            self._feed(x, y, extras)
        self.graph.replay()
        return self.static_out

    def _eager(self, x, y, extras) -> Dict[str, torch.Tensor]:
        out = self.model(x, y, **extras)
        self.update(out["loss"])
        accumulate(out, y, self.sums, self.correct, self.correct5)
        # Detached: a step's autograd graph must not outlive it (a CUDA graph's capture needs the
        # gradients' accumulation on its own stream, which a living earlier graph would pin).
        return {k: v.detach() for k, v in out.items()}

    def _warm_up(self, x, y, extras):
        """An ordinary (real) training step, on a side stream, as CUDA graph capture requires."""
        self.warm += 1
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self._eager(x, y, extras)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _feed(self, x, y, extras) -> None:
        self.static["x"].copy_(x, non_blocking=True)
        self.static["y"].copy_(y, non_blocking=True)
        for k, v in extras.items():
            self.static[k].copy_(v, non_blocking=True)

    def _capture(self, x, y, extras) -> bool:
        """Records one whole step into a CUDA graph (nothing runs: the caller replays it)."""
        self.static = {"x": x.clone(), "y": y.clone(), **{k: v.clone() for k, v in extras.items()}}
        static_extras = {k: self.static[k] for k in extras}
        # Each graph has a memory pool of its own (reusing the pool of a released graph is an error).
        # A failed capture leaves the random generator expecting one (every later draw would fail)
        # and the capture's stream current: both are put back.
        generator = torch.cuda.default_generators[self.device.index if self.device.index is not None
                                                  else torch.cuda.current_device()]
        before, stream = generator.clone_state(), torch.cuda.current_stream(self.device)
        graph = torch.cuda.CUDAGraph()
        self.update.optimizer.zero_grad(set_to_none=True)  # backward in the graph allocates the grads it refills
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.model(self.static["x"], self.static["y"], **static_extras)
                self.update(out["loss"])
                accumulate(out, self.static["y"], self.sums, self.correct, self.correct5)
        except RuntimeError as e:  # an op that syncs with the host, or cannot be captured
            # torch.cuda.graph's exit fails before it restores the stream: put back both.
            torch.cuda.set_stream(stream)
            generator.graphsafe_set_state(before)
            self.failed = True
            self.update.optimizer.zero_grad(set_to_none=True)
            log.warning("cuda_graphs: this training step cannot be captured as a CUDA graph (%s); training on "
                        "without graphs", " ".join(str(e).split())[:200])
            return False
        self.graph, self.static_out, self.captures = graph, {k: v.detach() for k, v in out.items()}, self.captures + 1
        self.captured_with = self._learning_rates()
        return True

    def _learning_rates(self) -> list:
        """What the captured update bakes in and kdrun changes: each group's learning rate."""
        return [g["lr"] for g in self.update.optimizer.param_groups]


def use_graphs(model: nn.Module, data, device: torch.device) -> bool:
    """Whether a trainer's training step is captured as a CUDA graph: its `cuda_graphs` setting
    (kdrun.speed: auto, on, or off where graphs cannot apply) for this data — auto when the data is held
    in memory on the device (fixed batch shapes, no loader threads), on for any data."""
    setting = getattr(model, "cuda_graphs", "off")
    return device.type == "cuda" and (setting == "on" or (setting == "auto" and data.in_memory))


def warm_up(step: TrainStep, loader, eval_models, eval_loader, device: torch.device, force: bool = False) -> float:
    """Pays CUDA's one-time costs before epoch 1 — loading kernels, building cuDNN plans, growing the
    memory pool — on a copy of the training state that is then put back, so that epoch 1 is timed
    like any other and trains exactly as without it. Returns the seconds it took (0 off CUDA, where
    there is nothing to pay; `force` runs it anyway, for tests)."""
    if device.type != "cuda" and not force:
        return 0.0
    start = time.perf_counter()
    model, optimizer = step.model, step.update.optimizer
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    scaler = copy.deepcopy(step.update.scaler.state_dict()) if step.update.scaler is not None else None
    cuda = device.type == "cuda"
    rng = torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None
    x, y, *extras = next(iter(loader))
    x, y = x.to(device), y.to(device)
    extras = extras[0] if extras else {}
    n = len(getattr(loader, "labels", ())) or len(getattr(loader, "dataset", ()))
    last = n % len(y) if n else 0  # the last, partial batch has shapes of its own
    model.train()
    lr_at, step.update.lr_at = step.update.lr_at, None
    for size in [len(y)] * 2 + ([last] if last >= 2 else []):
        out = model(x[:size], y[:size], **{k: v[:size] for k, v in extras.items()})
        step.update(out["loss"])
    step.update.lr_at = lr_at
    if eval_loader is not None:
        ex = next(iter(eval_loader))[0].to(device)
        with torch.no_grad():
            for m in eval_models:
                m.eval()
                m(ex)
    optimizer.zero_grad(set_to_none=True)
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    if scaler is not None:
        step.update.scaler.load_state_dict(scaler)
    torch.set_rng_state(rng[0])
    if cuda:
        torch.cuda.set_rng_state(rng[1], device)
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
