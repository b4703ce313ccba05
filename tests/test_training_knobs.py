"""The knobs every ImageNet recipe uses: label smoothing, a linear warmup (resume stays exact), gradient
clipping, the fp16 GradScaler (its logic, on the CPU), and top-5 accuracy."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from kdrun import Interrupted
from kdrun.engine import evaluate, lr_factor, make_train_step
from kdrun.methods.base import Distiller
from kdrun.run import run
from kdrun.speed import OptimizerStep, grad_scaler
from kdrun.sweep import aggregate_seeds, read_jobs, summarise
from tests.conftest import make_cfg
from tests.test_resume import _student_lines, stop_in_epoch

CPU = torch.device("cpu")


def test_warmup_ramps_linearly_per_step_and_multiplies_the_schedule():
    assert lr_factor("cosine", 1, 4) == 1.0 and lr_factor("multistep", 31, 100, [30, 60, 90]) == pytest.approx(0.1)
    # 2 warmup epochs into a 4-epoch cosine: half-way through epoch 1 the ramp is at 0.5 / 2.
    assert lr_factor("cosine", 1, 4, warmup_epochs=2, progress=0.5) == 0.25
    assert lr_factor("cosine", 2, 4, warmup_epochs=2, progress=1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("cosine", 3, 4, warmup_epochs=2, progress=0.1) == pytest.approx(0.5)  # warmup over
    assert lr_factor("multistep", 1, 100, [30], warmup_epochs=5, progress=0.1) == pytest.approx(0.02)


def test_label_smoothing_of_the_cross_entropy_by_hand():
    z, y, eps = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), 0.1
    log_p = [v - math.log(sum(math.exp(u) for u in (2.0, 0.0, -1.0))) for v in (2.0, 0.0, -1.0)]
    expected = (1 - eps) * -log_p[0] + eps * -sum(log_p) / 3
    out = Distiller(nn.Identity(), label_smoothing=eps)(z, y)  # the student's logits are its inputs
    assert out["loss_ce"].item() == pytest.approx(expected, abs=1e-6)


def _update(scaler=None, grad_clip=None, g=(3.0, 4.0, 0.0, 0.0)):
    """One SGD step (lr 1) on p = 0 with the loss p . g: the step is -g, clipped or not."""
    p = nn.Parameter(torch.zeros(4))
    step = OptimizerStep(torch.optim.SGD([p], lr=1.0), scaler, grad_clip)
    step((p * torch.tensor(g)).sum())
    return p.detach()


def test_gradient_clipping_caps_the_norm():
    assert torch.allclose(_update(grad_clip=0.5), torch.tensor([-0.3, -0.4, 0.0, 0.0]))
    assert torch.equal(_update(grad_clip=10.0), torch.tensor([-3.0, -4.0, 0.0, 0.0]))  # under the cap


def test_a_warmup_sets_the_rate_of_every_step():
    p = nn.Parameter(torch.zeros(1))
    step = OptimizerStep(torch.optim.SGD([p], lr=1.0))
    step.start_epoch(lambda i: 0.25 * (i + 1))
    seen = []
    for _ in range(3):
        step(p.sum())
        seen.append(step.optimizer.param_groups[0]["lr"])
    assert seen == [0.25, 0.5, 0.75] and p.item() == pytest.approx(-1.5)


def test_the_grad_scaler_scales_unscales_before_clipping_and_skips_inf_steps():
    assert grad_scaler(torch.float16, CPU) is not None and grad_scaler(torch.bfloat16, CPU) is None
    assert grad_scaler(None, CPU) is None
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    assert torch.equal(_update(scaler), torch.tensor([-3.0, -4.0, 0.0, 0.0]))  # the loss x 2^16, the step not
    # Clipping sees the true gradient (norm 5), not the scaled one (norm 5 x 2^16).
    assert torch.allclose(_update(torch.amp.GradScaler("cpu", init_scale=2.0**16), grad_clip=0.5),
                          torch.tensor([-0.3, -0.4, 0.0, 0.0]))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    assert torch.equal(_update(scaler, g=(math.inf, 1.0, 0.0, 0.0)), torch.zeros(4))  # an inf gradient: no step
    assert scaler.get_scale() == 2.0**15  # and a smaller scale for the next one


def test_fp16_gradients_underflow_without_the_scaler_and_survive_with_it():
    """CPU autocast has fp16 matmuls too: a gradient of 1e-8 reaching one is below fp16's smallest
    subnormal (6e-8), so it becomes 0 unless the loss is scaled first."""
    moved = {}
    for scaled in (False, True):
        w = nn.Parameter(torch.zeros(8, 1))
        step = OptimizerStep(torch.optim.SGD([w], lr=1.0), grad_scaler(torch.float16 if scaled else None, CPU))
        with torch.autocast("cpu", dtype=torch.float16):
            out = torch.ones(1, 8) @ w
        step(out.float().sum() * 1e-8)
        moved[scaled] = w.detach().abs().max().item()
    assert moved[False] == 0.0 and moved[True] == pytest.approx(1e-8, rel=1e-3)


def test_the_step_of_a_run_and_of_the_bench_clips_and_scales_fp16():
    """kdrun.engine.make_train_step, where fit() and `make bench` both get their step: the recipe's
    grad_clip, and fp16's loss scaler (bf16 and full precision need none)."""
    recipe = make_cfg("student.grad_clip=0.5").student
    step = make_train_step(Distiller(nn.Linear(4, 3), amp_dtype=torch.float16), recipe, CPU)
    assert step.update.grad_clip == 0.5 and isinstance(step.update.scaler, torch.amp.GradScaler)
    step.begin_epoch()
    out = step(torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), {})
    assert torch.isfinite(out["loss"]) and step.update.scaler.get_scale() == 2.0**16  # scaled, no overflow
    assert make_train_step(Distiller(nn.Linear(4, 3)), make_cfg().student, CPU).update.scaler is None


ARGS = ["dataset=fake", "dataset.num_train=200", "kd=none", "student=mlp800", "epochs=3", "student.warmup_epochs=2",
        "student.grad_clip=1.0", "student.label_smoothing=0.1"]


def test_resume_with_warmup_clipping_and_smoothing_is_exact(tmp_path, monkeypatch):
    full = run(make_cfg(*ARGS, tmp=tmp_path), tmp_path / "full")
    lines = _student_lines(tmp_path / "full")
    # mlp800's lr 0.05, cosine over 3 epochs, times the ramp at each epoch's end (1/2, then 1)
    assert [r["lr"] for r in lines] == pytest.approx([0.05 * 0.5, 0.05 * 0.75, 0.05 * 0.25])
    with stop_in_epoch(2, monkeypatch), pytest.raises(Interrupted):
        run(make_cfg(*ARGS, tmp=tmp_path), tmp_path / "cut")
    resumed = run(make_cfg(*ARGS, "resume=true", tmp=tmp_path), tmp_path / "cut")
    assert _student_lines(tmp_path / "cut") == lines
    assert resumed["student"]["test_acc"] == full["student"]["test_acc"]


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x.long()]


def test_top5_over_ten_classes_only():
    logits = torch.arange(12.0).repeat(2, 1)  # class 11 highest, then 10, 9, ...
    y = torch.tensor([9, 4])  # the 3rd highest (in the top 5), the 8th (not)
    result = evaluate(_Fixed(logits), [(torch.tensor([0, 1]), y)], CPU)
    assert (result["acc"], result["acc5"]) == (0.0, 0.5)
    assert "acc5" not in evaluate(_Fixed(logits[:, :10]), [(torch.tensor([0, 1]), torch.tensor([9, 4]))], CPU)


def test_the_sweep_summary_has_top5_columns(tmp_path):
    for job, acc5 in (("0", 0.9), ("1", 0.8)):
        (tmp_path / job).mkdir()
        (tmp_path / job / "summary.json").write_text(json.dumps({
            "status": "ok", "kd": ["hinton"], "overrides": [f"seed={job}"],
            "teacher": {"test_acc": 0.7, "test_acc5": 0.95}, "student": {"test_acc": 0.6, "test_acc5": acc5}}))
    summary = summarise(read_jobs([tmp_path]))
    assert {"teacher_test_acc5", "student_test_acc5"} <= set(summary.columns)
    assert [r["student_test_acc5"] for r in summary.rows] == [0.9, 0.8]
    columns, groups = aggregate_seeds(summary)
    assert "student_test_acc5_mean" in columns and groups[0]["student_test_acc5_mean"] == pytest.approx(0.85)
