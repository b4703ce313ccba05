"""The deployment report: what a model costs to ship and run, and what the compression bought.

For each model a run reports: parameters, the size of its weights as saved (float32 state_dict),
multiply-adds per image at the data's input size (counted by torch.utils.flop_counter, which counts
2 FLOPs per multiply-add of matrix products and convolutions; activations, pooling and
normalisation are not counted), the median CPU latency of one image after warm-up, and the
throughput at batch 64 on the run's device. `compression()` compares the teacher with the student.

Measuring is bounded in time (a few seconds per model at most, far less for small ones):
`deploy_report=false` turns it off.
"""
from __future__ import annotations

import contextlib
import io
import statistics
import time
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from kdrun.models import count_parameters

# Repetitions, each bounded by a time budget: a tiny MLP gets its median from 30 runs in
# milliseconds, a ResNet-50 stops at the budget.
LATENCY_WARMUP, LATENCY_RUNS, LATENCY_BUDGET_S = 3, 30, 0.5
THROUGHPUT_BATCH, THROUGHPUT_RUNS, THROUGHPUT_BUDGET_S = 64, 20, 0.5


def weights_bytes(model: nn.Module) -> int:
    """The size of the model's state_dict as torch.save writes it (what a weights file costs)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def count_flops(model: nn.Module, image: torch.Tensor) -> int:
    """FLOPs of one forward pass on `image` (a batch of one), as torch.utils.flop_counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_runs(fn: Callable[[], object], device: torch.device, warmup: int, runs: int, budget_s: float) -> list:
    """Seconds of each of up to `runs` calls of `fn` after `warmup` calls, stopping once `budget_s` is
    spent (at least one timed call). A warm-up that alone exceeds the budget is not repeated."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
        _sync(device)
        if time.perf_counter() - start > budget_s:
            break
    times: list = []
    spent = 0.0
    while len(times) < runs and (not times or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return times


@contextlib.contextmanager
def _eager():
    """Runs a model that `compile=true` compiled as plain PyTorch: the report measures the model as
    it is shipped, and compiling it again for the CPU would cost minutes."""
    stance = getattr(torch.compiler, "set_stance", None)
    with stance("force_eager") if stance else contextlib.nullcontext():
        yield


def measure(model: nn.Module, image_shape: tuple, device: Union[str, torch.device] = "cpu") -> dict:
    """The deployment figures of `model` for images of `image_shape` (C, H, W): float32, eval mode;
    the throughput on `device` ("cpu", "cuda", "cuda:1" or a torch.device). The model ends on the CPU,
    in eval mode."""
    device = torch.device(device)
    model.eval().float()
    out = {"params": count_parameters(model), "weights_bytes": weights_bytes(model)}
    with torch.no_grad(), _eager():
        if device.type != "cpu":  # the run's device first, while the model is there
            model.to(device)
        # Inputs from a private generator: measuring must not move the run's global random state.
        g = torch.Generator().manual_seed(0)
        batch = torch.randn(THROUGHPUT_BATCH, *image_shape, generator=g).to(device)
        times = time_runs(lambda: model(batch), device, 1, THROUGHPUT_RUNS, THROUGHPUT_BUDGET_S)
        out.update({"throughput": round(THROUGHPUT_BATCH / statistics.median(times), 1),
                    "throughput_device": str(device), "throughput_batch": THROUGHPUT_BATCH})
        model.to("cpu")
        image = torch.randn(1, *image_shape, generator=g)
        flops = count_flops(model, image)
        out.update({"flops": flops, "macs": flops // 2})
        times = time_runs(lambda: model(image), torch.device("cpu"), LATENCY_WARMUP, LATENCY_RUNS, LATENCY_BUDGET_S)
        out.update({"cpu_latency_ms": round(1000 * statistics.median(times), 4), "cpu_latency_runs": len(times),
                    "cpu_threads": torch.get_num_threads()})
    return out


def report(models: dict, modules: Dict[str, nn.Module], image_shape: tuple, device: torch.device) -> None:
    """Adds `deploy` to every summary entry in `models` (a scheme's return: `teacher`, `student`,
    `models`, `ensemble`, and a teacher ensemble's `members`) whose module the scheme handed over in
    `modules`, by the entry's name (`teacher`, `student`, `teacher.<member>`, `<model>`,
    `ensemble`). A module reported under several names is measured once."""
    measured: Dict[int, dict] = {}

    def add(entry: Optional[dict], name: str) -> None:
        module = modules.get(name)
        if not entry or module is None:
            return
        if id(module) not in measured:
            measured[id(module)] = measure(module, image_shape, device)
        entry["deploy"] = dict(measured[id(module)])

    for role in ("teacher", "student", "ensemble"):
        add(models.get(role), role)
    for member, entry in ((models.get("teacher") or {}).get("members") or {}).items():
        add(entry, f"teacher.{member}")
    for name, entry in (models.get("models") or {}).items():
        add(entry, name)


def compression(teacher: Optional[dict], student: Optional[dict]) -> Optional[dict]:
    """What the student saves over the teacher: how many times fewer parameters, weight bytes and
    multiply-adds, how many times faster on the CPU (batch 1) and at batch 64 on the run's device,
    and the test accuracy it gives up (student - teacher; negative is lost)."""
    if not teacher or not student or "deploy" not in teacher or "deploy" not in student:
        return None
    t, s = teacher["deploy"], student["deploy"]

    def ratio(a, b) -> Optional[float]:
        return round(a / b, 3) if a and b else None

    out = {"params": ratio(t["params"], s["params"]), "weights_bytes": ratio(t["weights_bytes"], s["weights_bytes"]),
           "macs": ratio(t["macs"], s["macs"]), "cpu_latency": ratio(t["cpu_latency_ms"], s["cpu_latency_ms"]),
           "throughput": ratio(s["throughput"], t["throughput"])}
    if teacher.get("test_acc") is not None and student.get("test_acc") is not None:
        out["test_acc_delta"] = student["test_acc"] - teacher["test_acc"]
    return out

