"""The training step as a CUDA graph (kdrun.step): the knob's rules and the warm-up on the CPU; on a
GPU (skipped without one), a graphed epoch against an eager one."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdrun import KdrunError
from kdrun.data import build_data
from kdrun.engine import make_train_step, reseed, train_one_epoch
from kdrun.speed import OptimizerStep
from kdrun.step import TrainStep, warm_up
from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config
from kdrun.run import run
from kdrun.speed import amp_dtype, cuda_graphs_setting
from tests.conftest import make_cfg

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_the_knob_is_off_on_the_cpu_and_on_is_refused_with_the_reason(tmp_path):
    cfg = make_cfg("dataset=fake")
    assert cfg.cuda_graphs == "auto" and cuda_graphs_setting(cfg, CPU) == "off"
    with pytest.raises(KdrunError, match=r"^cuda_graphs=on: CUDA graphs need a CUDA device \(this run is on cpu\)"):
        run(make_cfg("dataset=fake", "cuda_graphs=on", "device=cpu", tmp=tmp_path), tmp_path / "run")
    with pytest.raises(KdrunError, match=r"^cuda_graphs=sometimes: choose auto, on or off"):
        run(make_cfg("dataset=fake", "cuda_graphs=sometimes", "device=cpu", tmp=tmp_path), tmp_path / "run")


def _parts(device, *overrides):
    cfg = make_cfg("dataset=fake", "teacher=lenet5", "student=lenet5", "dataset.num_train=300", *overrides)
    data = build_data(cfg.dataset, "/unused", device)
    reseed(0, "teacher")
    teacher = build_from_config(cfg.teacher, data).to(device)
    reseed(0, "student")
    student = build_from_config(cfg.student, data).to(device)
    return cfg, data, teacher, student


def _epoch(distiller, cfg, data, device, graphs, warm=False, epochs=2):
    """`epochs` epochs of the Distiller, each at its own learning rate; returns each epoch's metrics,
    the final weights and the TrainStep (which says whether it captured graphs)."""
    step = make_train_step(distiller, cfg.student, device, graphs)
    update, optimizer = step.update, step.update.optimizer
    loader = data.loader("train", 32, shuffle=True, augment=True)  # 270 images: 8 batches of 32, one of 14
    if warm:
        warm_up(step, loader, [distiller.student], data.loader("val", 64), device, force=True)
    out = []
    for epoch in (1, 2)[:epochs]:
        reseed(0, "student", epoch)
        for group in optimizer.param_groups:
            group["lr"] = cfg.student.lr / epoch
        out.append(train_one_epoch(distiller, loader, update, device, "t", progress=False, step=step))
    return out, {k: v.detach().cpu().clone() for k, v in distiller.state_dict().items()}, step


def test_the_cuda_warm_up_leaves_training_exactly_as_without_it():
    """The warm-up trains on a copy of the state and puts everything back (weights, batch-norm
    statistics, optimizer state, random generators): the epochs after it are bitwise those without."""
    cfg, data, teacher, student = _parts(CPU)
    methods = build_methods(cfg.kd, cfg.student, cfg.teacher)
    plain = Distiller(copy.deepcopy(student), teacher, methods, 0.1)
    warmed = Distiller(copy.deepcopy(student), teacher, copy.deepcopy(methods), 0.1)
    a, wa, _ = _epoch(plain, cfg, data, CPU, graphs=False)
    b, wb, _ = _epoch(warmed, cfg, data, CPU, graphs=False, warm=True)
    for ma, mb in zip(a, b):
        assert {k: v for k, v in ma.items() if k not in ("seconds", "images_per_sec")} == \
               {k: v for k, v in mb.items() if k not in ("seconds", "images_per_sec")}
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@needs_cuda
@pytest.mark.parametrize("overrides", [
    ("student.optimizer=sgd",),
    ("student.optimizer=adam", "student.lr=0.001"),
    ("kd=at",),  # a feature method: forward hooks inside the captured step
    ("student.grad_clip=1.0", "amp=bf16"),  # clipping and autocast inside the captured step
])
def test_a_graphed_epoch_equals_an_eager_one_to_float_tolerance(overrides):
    device = torch.device("cuda")
    cfg, data, teacher, student = _parts(device, *overrides)
    methods = build_methods(cfg.kd, cfg.student, cfg.teacher)
    example = next(iter(data.loader("train", 4)))[0]
    speed = {"amp_dtype": amp_dtype(cfg.amp, device)}
    eager = Distiller(copy.deepcopy(student), teacher, copy.deepcopy(methods), 0.1, example=example, **speed)
    graphed = Distiller(copy.deepcopy(student), teacher, copy.deepcopy(methods), 0.1, example=example, **speed)
    graphed.load_state_dict(eager.state_dict())
    a, wa, _ = _epoch(eager, cfg, data, device, graphs=False)
    b, wb, step = _epoch(graphed, cfg, data, device, graphs=True)
    # The graphs were used: a capture that fails trains on eagerly (one warning), which would pass every
    # comparison below. Each epoch's learning rate is baked into a capture of its own (kdrun.step).
    assert not step.failed and step.captures == len(b) and step.graph is not None
    for ma, mb in zip(a, b):
        # Float tolerance: the graphed update is the same arithmetic, but capturable Adam keeps its step
        # count on the device, which rounds its bias correction differently (seen: 1e-4 relative).
        assert ma["train/loss"] == pytest.approx(mb["train/loss"], rel=1e-3, abs=1e-5)
        assert ma["train/acc"] == pytest.approx(mb["train/acc"], abs=2 / 270)
    # Adam divides by the root of its second moment, which amplifies the rounding difference above: on
    # an H200 (2026-11-26) weights after 2 epochs differed by up to 1e-3; SGD's by less than 1e-4.
    atol = 5e-3 if cfg.student.optimizer == "adam" else 1e-4
    for k in wa:
        if wa[k].is_floating_point():
            assert torch.allclose(wa[k], wb[k], rtol=1e-3, atol=atol), k


@needs_cuda
def test_a_step_that_cannot_be_captured_falls_back_to_eager_with_one_warning(caplog):
    class Syncs(nn.Module):  # .item() in forward: a host sync, which a CUDA graph cannot hold
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, y):
            z = self.fc(x)
            scale = float(z.abs().max().item()) + 1.0
            return {"loss": nn.functional.cross_entropy(z / scale, y), "logits": z}

    device = torch.device("cuda")
    model = Syncs().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(model, OptimizerStep(opt), device, graphs=True)
    step.begin_epoch()
    for _ in range(8):
        step(torch.randn(16, 4, device=device), torch.randint(0, 3, (16,), device=device), {})
    assert step.failed and step.graph is None and step.seen == 128
    assert sum("cannot be captured" in r.message for r in caplog.records) == 1
