"""GPU check for issue 9 (the CIFAR-100 benchmark): training throughput of every benchmark pair with
KD (kdrun's Distiller and training step: live teacher, bf16 autocast, channels-last and CUDA graphs as
`amp=auto`, `channels_last=auto`, `cuda_graphs=auto` choose on CUDA), batch 64 as in the recipe, on random CIFAR-shaped batches (the
real data is not needed for speed), and the hours one 240-epoch run of 45,000 images would take.

    PYTHONPATH=. python gpu_checks/9.py   # under a minute on one GPU
"""
import time

import torch

from kdrun.cifar100_published import PAIRS
from kdrun.engine import make_optimizer
from kdrun.methods.base import Distiller
from kdrun.methods.hinton import Hinton
from kdrun.models import build_model
from kdrun.speed import OptimizerStep, amp_dtype
from kdrun.step import TrainStep

device = torch.device("cuda")
dtype = amp_dtype("auto", device)
recipe = type("R", (), dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4))
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, autocast {dtype}")
print(f"{'pair':24s} {'images/s':>9s} {'h / 240 epochs':>15s}")
for pair in PAIRS:
    t_name, s_name = pair.split("-")
    teacher = build_model(f"cifar_{t_name}", 100, 3, 32).to(device).to(memory_format=torch.channels_last)
    student = build_model(f"cifar_{s_name}", 100, 3, 32).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(64, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (64,), device=device)
    trainer = Distiller(student, teacher, {"hinton": Hinton(0.9, 4.0)}, 0.1, amp_dtype=dtype, channels_last=True)
    optimizer = make_optimizer(recipe, [p for p in trainer.parameters() if p.requires_grad], capturable=True)
    step = TrainStep(trainer, OptimizerStep(optimizer), device, graphs=True)
    trainer.train()

    def steps(n):
        for _ in range(n):
            step(x, y, {})
        torch.cuda.synchronize()

    steps(10)  # warm-up (cuDNN plans, the graph's capture)
    start = time.perf_counter()
    steps(50)
    per_sec = 50 * 64 / (time.perf_counter() - start)
    print(f"{pair:24s} {per_sec:9.0f} {240 * 45000 / per_sec / 3600:15.2f}")
