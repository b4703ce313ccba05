"""`make bench`: training throughput, kdrun's step against a bare PyTorch loop, on the run's device.

MLP case, the default MNIST experiment (mlp1200 -> mlp800, Hinton KD, batch 128): images per second
for (a) the student trained alone, (b) KD with the live teacher, (c) KD with the teacher's cached
logits, (d) the same KD run fed by a plain torchvision DataLoader with ToTensor (the usual way), and a
bare eager PyTorch KD step on tensors already in memory; the ratios (c)/(a) and (c)/(d). Every case
uses the speed settings a run would (amp, channels_last, cuda_graphs: all `auto`) and takes the step a
run takes (kdrun.engine.make_train_step: the recipe's optimizer, grad_clip, fp16's loss scaler), and on
CUDA (a) and (c) are also run with cuda_graphs=off, to show what the graphs buy.

CNN case, a CIFAR-sized pair (resnet50 -> mobilenet_v2, 32x32x3, 100 classes, batch 128, shift and
flip augmentation): kdrun's KD step against the bare eager loop written below (`bare_kd_steps`), with
kdrun's one-time CUDA warm-up reported on its own.

DDP case (e): case (c) trained with DistributedDataParallel under torchrun at world sizes 1 and 2
(`--world-sizes`), the same global batch, the machine's threads shared between the processes.

Overrides go to the config: `python -m kdrun.bench device=cuda student.batch_size=256`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import datasets, transforms

from kdrun import distributed
from kdrun.data import build_data
from kdrun.engine import make_optimizer, make_train_step, reseed, train_one_epoch
from kdrun.step import use_graphs, warm_up
from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config
from kdrun.speed import accelerate, speed_settings
from kdrun.teachers import cached_train_logits

CNN_PAIR = ["dataset=fake", "dataset.channels=3", "dataset.image_size=32", "dataset.num_classes=100",
            "dataset.val_split=0", "dataset.num_test=256", "dataset.mean=[0.5,0.5,0.5]",
            "dataset.std=[0.25,0.25,0.25]", "dataset.shift=4", "dataset.hflip=true",
            "teacher=resnet50", "student=mobilenetv2"]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from kdrun.cli import _config_dir
    from kdrun.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=_config_dir(), version_base="1.3"):
        return compose("config", overrides=overrides)


def _take(loader, steps: int):
    """The first `steps` batches, cycling over epochs."""
    n = 0
    while True:
        for batch in loader:
            yield batch
            n += 1
            if n == steps:
                return


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _throughput(distiller, loader, steps: int, device, recipe, data=None) -> tuple[float, float | None]:
    """Images/s (of all processes together) of kdrun's own epoch loop over `steps` batches, after a
    warm-up of 10, which also captures the CUDA graph where one is used; and, where one was captured,
    the images/s of that step replayed alone (the device's own pace), else None. `data`: the in-memory
    data `loader` comes from (None: a loader of files, where a run tries no graphs)."""
    graphs = data is not None and use_graphs(distiller, data, device)
    step = make_train_step(distiller, recipe, device, graphs)  # DDP in case (e)'s processes
    trainer, update = step.model, step.update
    train_one_epoch(trainer, _take(loader, 10), update, device, "warm-up", progress=False, step=step)
    _sync(device)  # the timed pass replays the graph captured above (same learning rate)
    rate = train_one_epoch(trainer, _take(loader, steps), update, device, "bench", progress=False,
                           step=step)["images_per_sec"]
    if step.graph is None:
        return rate, None
    start = time.perf_counter()  # no loader around it
    for _ in range(steps):
        step.graph.replay()
    _sync(device)
    return rate, steps * step.batch_size / (time.perf_counter() - start)


def bare_kd_steps(student, teacher, batches, optimizer, steps: int, T: float, alpha: float, amp_dtype) -> None:
    """The reference: a plain eager PyTorch KD step (Hinton's loss) on tensors already on the device."""
    for i in range(steps):
        x, y = batches[i % len(batches)]
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            s = student(x)
            with torch.no_grad():
                t = teacher(x)
        s, t = s.float(), t.float()
        kl = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True)
        loss = (1 - alpha) * F.cross_entropy(s, y) + alpha * T * T * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _bare_rate(student, teacher, data, device, recipe, steps, cfg, speed) -> float:
    batches = []
    for x, y in _take(data.loader("train", recipe.batch_size, shuffle=True, augment=recipe.augment), 8):
        if speed["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        batches.append((x, y))
    optimizer = make_optimizer(recipe, student.parameters())
    args = (student, teacher, batches, optimizer)
    bare_kd_steps(*args, min(10, steps), cfg.T, cfg.alpha, speed["amp_dtype"])
    _sync(device)
    start = time.perf_counter()
    bare_kd_steps(*args, steps, cfg.T, cfg.alpha, speed["amp_dtype"])
    _sync(device)
    return steps * recipe.batch_size / (time.perf_counter() - start)


def mlp_case(args, device) -> dict:
    cfg = _compose(["progress=false", *args.overrides])
    data = build_data(cfg.dataset, cfg.data_dir, device)
    teacher = build_from_config(cfg.teacher, data).to(device)  # its weights do not change the speed
    recipe, bs = cfg.student, cfg.student.batch_size

    def student_distiller(with_teacher: bool, graphs: str | None = None):
        reseed(cfg.seed, "student")
        student = accelerate(build_from_config(cfg.student, data).to(device), cfg, device)
        methods = build_methods(cfg.kd, cfg.student, cfg.teacher) if with_teacher else {}
        speed = speed_settings(cfg, device, student)
        if graphs is not None:
            speed["cuda_graphs"] = graphs
        return Distiller(student, teacher if with_teacher else None, methods, 0.1, **speed)

    logits = cached_train_logits(teacher, data, device, _scratch_dir(), "bench")
    plain = datasets.MNIST(cfg.data_dir, train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(list(cfg.dataset.mean), list(cfg.dataset.std))]))
    dataloader = torch.utils.data.DataLoader(plain, batch_size=bs, shuffle=True, num_workers=args.workers,
                                             pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    tensor_loader = data.loader("train", bs, shuffle=True, augment=recipe.augment)
    cached_loader = data.loader("train", bs, shuffle=True, augment=recipe.augment, extras={"teacher_logits": logits})
    cases = {
        "a": ("student alone (in-memory)", student_distiller(False), tensor_loader),
        "b": ("KD, live teacher (in-memory)", student_distiller(True), tensor_loader),
        "c": ("KD, cached teacher logits (in-memory)", student_distiller(True), cached_loader),
        "d": (f"KD, live teacher, DataLoader + ToTensor ({args.workers} workers)", student_distiller(True), dataloader),
    }
    if device.type == "cuda":
        cases["a0"] = ("student alone, cuda_graphs=off", student_distiller(False, "off"), tensor_loader)
        cases["c0"] = ("KD, cached logits, cuda_graphs=off", student_distiller(True, "off"), cached_loader)
    if args.bare:
        cases["bare"] = ("bare eager PyTorch KD step (tensors in memory)", None, None)

    def rate(key: str) -> tuple[float, float | None]:
        """The case's images/s, and its captured step's replayed alone (None: no graph)."""
        if key == "bare":
            reseed(cfg.seed, "student")
            student = accelerate(build_from_config(cfg.student, data).to(device), cfg, device)
            speed = speed_settings(cfg, device, student)
            return _bare_rate(student, teacher, data, device, recipe, args.steps, cfg, speed), None
        _, d, loader = cases[key]
        return _throughput(d, loader, args.steps, device, recipe, data if key != "d" else None)

    # Every case once per round, the rounds one after another: a slow spell of a shared machine then
    # slows every case of a round alike, and the per-round ratios and the medians stay comparable.
    measured = [{key: rate(key) for key in cases} for _ in range(args.rounds)]
    rounds = [{key: images for key, (images, _) in m.items()} for m in measured]
    results = {key: statistics.median(r[key] for r in rounds) for key in cases}
    replays = {key: [m[key][1] for m in measured if m[key][1] is not None] for key in cases}  # CUDA graphs only

    def spread(values: list) -> str:
        return f"  ({min(values):,.0f}-{max(values):,.0f})" if len(values) > 1 else ""

    print(f"kdrun bench, MLP case: {cfg.teacher.name} -> {cfg.student.name}, batch {bs}, {args.steps} steps per case "
          f"and round, median of {args.rounds} round(s)")
    for key, (label, _, _) in cases.items():
        print(f"  ({key}) {label:<52} {results[key]:>10,.0f} images/s{spread([r[key] for r in rounds])}")
    ratios = {}

    def ratio(num: str, den: str, note: str, name: str | None = None) -> None:
        per_round = [r[num] / r[den] for r in rounds]
        ratios[name or f"{num}/{den}"] = statistics.median(per_round)
        spread = f" (rounds {min(per_round):.2f}-{max(per_round):.2f})" if args.rounds > 1 else ""
        print(f"  ({num})/({den}) = {statistics.median(per_round):.2f}{spread}  {note}".replace("(bare)", "bare"))

    ratio("c", "a", "(target >= 0.95: KD with cached logits costs about what the student alone does)")
    ratio("c", "d", "(target >= 3: against the usual DataLoader + live teacher)")
    if "a0" in results:
        ratio("a", "a0", "(CUDA graphs on / off, the student alone)")
        ratio("c", "c0", "(CUDA graphs on / off, KD with cached logits)")
    for key, values in replays.items():
        if values:
            results[f"replay_{key}"] = statistics.median(values)
            print(f"  ({key}) the captured step replayed alone (the device's pace)  {results[f'replay_{key}']:>10,.0f} "
                  f"images/s{spread(values)}")
    if "bare" in results:
        ratio("b", "bare", "(kdrun's live-teacher KD step against the bare eager one)")
    return {**results, **ratios}


def cnn_case(args, device) -> dict:
    steps = args.cnn_steps or (200 if device.type == "cuda" else 12)
    cfg = _compose(["progress=false", *CNN_PAIR, f"dataset.num_train={max(2048, 4 * 128)}",
                    *[o for o in args.overrides if not o.startswith(("dataset", "teacher=", "student="))]])
    data = build_data(cfg.dataset, cfg.data_dir, device)
    recipe = cfg.student
    reseed(cfg.seed, "teacher")
    teacher = accelerate(build_from_config(cfg.teacher, data).to(device), cfg, device).eval()
    reseed(cfg.seed, "student")
    student = accelerate(build_from_config(cfg.student, data).to(device), cfg, device)
    speed = speed_settings(cfg, device, student)
    distiller = Distiller(student, teacher, build_methods(cfg.kd, cfg.student, cfg.teacher), 1 - cfg.alpha, **speed)
    graphs = use_graphs(distiller, data, device)
    step = make_train_step(distiller, recipe, device, graphs)
    update = step.update
    loader = data.loader("train", recipe.batch_size, shuffle=True, augment=True)
    warm = warm_up(step, loader, [student], None, device)
    # Two timed passes: the first is what epoch 1 sees after the warm-up (graph capture included).
    first = train_one_epoch(distiller, _take(loader, steps), update, device, "cnn", progress=False, step=step)
    steady = train_one_epoch(distiller, _take(loader, steps), update, device, "cnn", progress=False, step=step)
    out = {"cnn_warmup_s": warm, "cnn_first": first["images_per_sec"], "cnn_steady": steady["images_per_sec"]}
    reseed(cfg.seed, "student")
    bare_student = accelerate(build_from_config(cfg.student, data).to(device), cfg, device)
    out["cnn_bare"] = _bare_rate(bare_student, teacher, data, device, recipe, steps, cfg, speed)
    print(f"kdrun bench, CNN case: {cfg.teacher.name} -> {cfg.student.name}, 32x32x3, 100 classes, batch "
          f"{recipe.batch_size}, {steps} steps per pass, amp={speed['amp_dtype']}, channels_last="
          f"{speed['channels_last']}, cuda_graphs={'on' if graphs else 'off'}")
    print(f"  kdrun one-time CUDA warm-up (before epoch 1)          {warm:>10.1f} s")
    print(f"  kdrun KD step, first pass                             {out['cnn_first']:>10,.0f} images/s")
    print(f"  kdrun KD step, second pass                            {out['cnn_steady']:>10,.0f} images/s")
    print(f"  bare eager PyTorch KD step (same models, in memory)   {out['cnn_bare']:>10,.0f} images/s")
    out["cnn_first/bare"] = out["cnn_first"] / out["cnn_bare"]
    print(f"  kdrun first pass / bare = {out['cnn_first/bare']:.2f}  (target >= 0.95 from the first epoch on)")
    return out


_DDP_LINE = "kdrun-bench-ddp "


def _ddp_worker(cfg, steps: int) -> None:
    """Case (e) in one process of a torchrun launch: case (c) with DDP; rank 0 prints the images/s."""
    from kdrun.run import pick_device

    device = distributed.init(pick_device(cfg.device), 600, False)
    data = build_data(cfg.dataset, cfg.data_dir, device)
    teacher = build_from_config(cfg.teacher, data).to(device)
    logits = cached_train_logits(teacher, data, device, Path(distributed.from_main(str(_scratch_dir()))), "bench")
    reseed(cfg.seed, "student")
    student = build_from_config(cfg.student, data).to(device)
    distiller = Distiller(student, teacher, build_methods(cfg.kd, cfg.student, cfg.teacher), 0.1)
    loader = data.loader("train", cfg.student.batch_size, shuffle=True, augment=cfg.student.augment,
                         extras={"teacher_logits": logits})
    result, _ = _throughput(distiller, loader, steps, device, cfg.student)
    if distributed.is_main():
        print(_DDP_LINE + json.dumps({"images_per_sec": result, "device": str(device)}), flush=True)


def ddp_case(world_sizes: list[int], steps: int, overrides: list[str]) -> dict:
    """Runs _ddp_worker under `torchrun --nproc_per_node=W` for each W; the machine's threads are split
    between the processes, so every world size has the same CPU (on a GPU machine: one GPU each)."""
    threads = torch.get_num_threads()
    results = {}
    for world in world_sizes:
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // world))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", "-m",
               "kdrun.bench", "--ddp-worker", f"--steps={steps}", *overrides]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith(_DDP_LINE)), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"the DDP case at world size {world} failed:\n{proc.stdout}\n{proc.stderr}")
        results[world] = json.loads(line[len(_DDP_LINE):])["images_per_sec"]
    print("kdrun bench, DDP case (e): case (c) under torchrun, the same global batch")
    for world, value in results.items():
        print(f"  (e) torchrun --nproc_per_node={world:<2}                              {value:>10,.0f} images/s")
    if {1, 2} <= results.keys():
        print(f"  (e) world size 2 / 1 = {results[2] / results[1]:.2f}")
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m kdrun.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed training steps per MLP case")
    parser.add_argument("--cnn-steps", type=int, default=0, help="timed steps per CNN pass (0: 200 on CUDA, 12 on CPU)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers in case (d)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="MLP case: run every case this many times, interleaved, and print the medians")
    parser.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare PyTorch reference loops")
    parser.add_argument("--no-cnn", dest="cnn", action="store_false", help="skip the CNN case")
    parser.add_argument("--world-sizes", default="1,2", help="case (e): DDP world sizes (empty: skip the case)")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds={args.rounds}: at least 1")
    if args.ddp_worker:
        return _ddp_worker(_compose(["progress=false", *args.overrides]), args.steps)
    from kdrun.run import pick_device

    device = pick_device(_compose(["progress=false", *args.overrides]).device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"kdrun bench on {device} ({where}), torch {torch.__version__}")
    results = mlp_case(args, device)
    if args.cnn:
        results.update(cnn_case(args, device))
    world_sizes = [int(w) for w in args.world_sizes.split(",") if w.strip()]
    results["ddp"] = ddp_case(world_sizes, args.steps, args.overrides) if world_sizes else {}
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"  peak memory: {peak:,.0f} MiB ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    return {**results, "peak_mib": peak}


def _scratch_dir():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="kdrun-bench-"))


if __name__ == "__main__":
    main()
