"""GPU check for issue 14 (the second wave of KD methods): one CUDA step of each new method under
bf16 autocast and channels-last, ResNet-34 -> ResNet-18 on CIFAR-shaped random data, then CRD at
its published size (50,000-image banks, 16,384 negatives, batch 64). Prints each loss (finite, in
float32), the step time and the peak GPU memory. Run: python gpu_checks/14.py (about a minute)."""
import os
import time

import torch

from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config
from kdrun.speed import accelerate
from tests.conftest import make_cfg


class FakeData:  # what build_from_config and CRD.prepare read from a DataBundle
    num_classes, in_channels, image_size = 100, 3, 32

    def __init__(self, n):
        self.sizes = {"train": n}
        self._labels = torch.randint(0, 100, (n,))

    def labels(self, split):
        return self._labels

    def loader(self, split, batch_size, **kw):
        yield torch.randn(batch_size, 3, 32, 32), self._labels[:batch_size]


DEVICE = torch.device(os.environ.get("CHECK_DEVICE", "cuda"))  # CHECK_DEVICE=cpu tries the script itself
CUDA = DEVICE.type == "cuda"


def sync():
    if CUDA:
        torch.cuda.synchronize()


def step(kd, n_train=512, batch=64, extra=()):
    device = DEVICE
    cfg = make_cfg(f"kd={kd}", "teacher=resnet34", "student=resnet18", "channels_last=on", *extra)
    data = FakeData(n_train)
    teacher = accelerate(build_from_config(cfg.teacher, data).to(device), cfg, device)
    student = accelerate(build_from_config(cfg.student, data).to(device), cfg, device)
    methods = build_methods(cfg.kd, cfg.student, cfg.teacher)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = data._labels[:batch].to(device)
    d = Distiller(student, teacher, methods, 1.0, example=x[:4], amp_dtype=torch.bfloat16, channels_last=True).to(device)
    for m in methods.values():
        m.prepare(teacher, data, device, 0)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.01)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    for i in range(3):
        sync()
        t = time.perf_counter()
        out = d(x, y, index=torch.arange(batch, device=device))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sync()
    losses = {k: round(v.item(), 4) for k, v in out.items() if k.startswith("loss_")}
    ok = all(torch.isfinite(v) and v.dtype == torch.float32 for k, v in out.items() if k.startswith("loss"))
    print(f"{kd:24s} finite+fp32={ok} step={1000 * (time.perf_counter() - t):.0f} ms "
          f"peak={torch.cuda.max_memory_allocated() / 2**20 if CUDA else 0:.0f} MiB {losses}")


if __name__ == "__main__":
    print(torch.cuda.get_device_name() if CUDA else "cpu", torch.__version__)
    for kd in ("crd", "vid", "ofd", "reviewkd", "kdsvd", "dist", "[crd,hinton]", "fitnet", "ab", "fsp"):
        step(kd)
    if CUDA:
        step("crd", n_train=50_000, extra=("kd.crd.nce_k=16384",))  # RepDistiller's CIFAR-100 size
