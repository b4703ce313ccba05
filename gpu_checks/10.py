"""GPU check for issue 10 (run from the repository root: `python gpu_checks/10.py`, about a minute).
Prints numbers; what to look for is said next to each.

1. fp16 underflow: a gradient of ~1e-8 under fp16 autocast is 0 without a GradScaler, non-zero with it.
2. A whole kdrun run with amp=fp16 on CUDA: ends ok, its resume checkpoint holds the scaler's state.
3. dataset=imagenet on CUDA: the DataLoader pins memory (batches arrive pinned).
4. The README's first example, one step at a time: images/s of a ResNet-50 teacher's forward plus a
   MobileNetV2 student's training step, batch 128 at 224x224, bf16 autocast and channels_last (the
   README quotes 0.8 images/s for 2 CPU cores; this is the GPU's number, data loading excluded).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdrun.data import build_data  # noqa: E402
from kdrun.run import run  # noqa: E402
from kdrun.speed import OptimizerStep, grad_scaler  # noqa: E402
from tests.conftest import make_cfg  # noqa: E402
from tests.datasets import write_imagenet_tree  # noqa: E402

assert torch.cuda.is_available(), "needs a CUDA device"
cuda = torch.device("cuda")
print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)

# 1. underflow
for scaled in (False, True):
    w = torch.nn.Parameter(torch.zeros(8, 1, device=cuda))
    step = OptimizerStep(torch.optim.SGD([w], lr=1.0), grad_scaler(torch.float16 if scaled else None, cuda))
    with torch.autocast("cuda", dtype=torch.float16):
        out = torch.ones(1, 8, device=cuda) @ w  # an fp16 matmul: its backward runs in fp16 too
    step(out.float().sum() * 1e-8)  # the gradient reaching it, 1e-8, is below fp16's smallest subnormal (6e-8)
    print(f"1. fp16, GradScaler={scaled}: w moved by {w.detach().abs().max().item():.3e} "
          f"(expect 0 without, 1e-8 with)")

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    # 2. a run with amp=fp16
    summary = run(make_cfg("dataset=fake", "teacher=resnet18", "student=resnet18", "amp=fp16", "device=cuda",
                           "student.grad_clip=1.0", "student.warmup_epochs=1", "epochs=2", tmp=tmp), tmp / "run")
    state = torch.load(tmp / "run" / "checkpoints" / "student_last.pt", weights_only=True)
    print(f"2. amp=fp16 run: status={summary['status']} student test_acc={summary['student']['test_acc']:.3f} "
          f"scaler in checkpoint={'scaler' in state} scale={state.get('scaler', {}).get('scale')}")
    # 3. pinned batches
    write_imagenet_tree(tmp / "data" / "imagenet")
    cfg = make_cfg("dataset=imagenet", "dataset.image_size=16", "dataset.resize_size=20", "dataset.num_workers=2",
                   "dataset.val_split=0")
    x, _ = next(iter(build_data(cfg.dataset, str(tmp / "data"), cuda).loader("train", 4, shuffle=True, augment=True)))
    print(f"3. imagenet DataLoader on CUDA: batch pinned={x.is_pinned()} (expect True)")

# 4. the README example's step
import torchvision  # noqa: E402

teacher = torchvision.models.resnet50().to(cuda, memory_format=torch.channels_last).eval()
student = torchvision.models.mobilenet_v2().to(cuda, memory_format=torch.channels_last)
opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
x = torch.randn(128, 3, 224, 224, device=cuda).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (128,), device=cuda)


def one_step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with torch.no_grad():
            zt = teacher(x)
        zs = student(x)
        loss = torch.nn.functional.cross_entropy(zs, y) + torch.nn.functional.kl_div(
            (zs.float() / 4).log_softmax(1), (zt.float() / 4).softmax(1), reduction="batchmean") * 16
    opt.zero_grad()
    loss.backward()
    opt.step()


for _ in range(3):
    one_step()
torch.cuda.synchronize()
start, n = time.perf_counter(), 20
for _ in range(n):
    one_step()
torch.cuda.synchronize()
rate = 128 * n / (time.perf_counter() - start)
print(f"4. ResNet-50 teacher + MobileNetV2 student step, bf16: {rate:,.0f} images/s -> one ImageNet epoch "
      f"(1.28M images) in {1.281e6 / rate / 60:.0f} min of compute")
