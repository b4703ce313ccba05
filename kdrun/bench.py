"""`make bench`: training throughput of the default MNIST experiment (mlp1200 -> mlp800, Hinton KD).

Prints images per second for (a) the student trained alone, (b) KD with the live teacher, (c) KD
with the teacher's cached logits, and (d) the same KD run fed by a plain torchvision DataLoader
with ToTensor (the usual way), plus the ratios (c)/(a) and (c)/(d) and the peak memory; then (e) case
(c) trained with DistributedDataParallel under torchrun at world sizes 1 and 2 (`--world-sizes`), the
same global batch, the machine's threads shared between the processes.
Overrides go to the config: `python -m kdrun.bench device=cuda student.batch_size=256`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torchvision import datasets, transforms

from kdrun import distributed
from kdrun.data import build_data
from kdrun.engine import make_optimizer, reseed, train_one_epoch
from kdrun.methods import build_methods
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config
from kdrun.teachers import cached_train_logits


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


def _throughput(distiller, loader, steps: int, device, recipe) -> float:
    optimizer = make_optimizer(recipe, [p for p in distiller.parameters() if p.requires_grad])
    trainer = distributed.wrap(distiller)  # DDP in case (e)'s processes; itself otherwise
    train_one_epoch(trainer, _take(loader, 10), optimizer, device, "warm-up", progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    metrics = train_one_epoch(trainer, _take(loader, steps), optimizer, device, "bench", progress=False)
    return metrics["images_per_sec"]  # of all processes together


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
    result = _throughput(distiller, loader, steps, device, cfg.student)
    if distributed.is_main():
        print(_DDP_LINE + json.dumps({"images_per_sec": result, "device": str(device)}), flush=True)


def _ddp_case(world_sizes: list[int], steps: int, overrides: list[str]) -> dict:
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
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m kdrun.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed training steps per case")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers in case (d)")
    parser.add_argument("--world-sizes", default="1,2", help="case (e): DDP world sizes (empty: skip the case)")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = _compose(["progress=false", *args.overrides])
    if args.ddp_worker:
        return _ddp_worker(cfg, args.steps)
    from kdrun.run import pick_device

    device = pick_device(cfg.device)
    data = build_data(cfg.dataset, cfg.data_dir, device)
    teacher = build_from_config(cfg.teacher, data).to(device)  # its weights do not change the speed
    recipe, bs = cfg.student, cfg.student.batch_size

    def student_distiller(with_teacher: bool):
        reseed(cfg.seed, "student")
        student = build_from_config(cfg.student, data).to(device)
        methods = build_methods(cfg.kd, cfg.student, cfg.teacher) if with_teacher else {}
        return Distiller(student, teacher if with_teacher else None, methods, 0.1)

    logits = cached_train_logits(teacher, data, device, _scratch_dir(), "bench")
    plain = datasets.MNIST(cfg.data_dir, train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(list(cfg.dataset.mean), list(cfg.dataset.std))]))
    dataloader = torch.utils.data.DataLoader(plain, batch_size=bs, shuffle=True, num_workers=args.workers,
                                             pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    tensor_loader = data.loader("train", bs, shuffle=True, augment=recipe.augment)
    cases = {
        "a": ("student alone (in-memory)", student_distiller(False), tensor_loader),
        "b": ("KD, live teacher (in-memory)", student_distiller(True), tensor_loader),
        "c": ("KD, cached teacher logits (in-memory)", student_distiller(True),
              data.loader("train", bs, shuffle=True, augment=recipe.augment, extras={"teacher_logits": logits})),
        "d": (f"KD, live teacher, DataLoader + ToTensor ({args.workers} workers)", student_distiller(True), dataloader),
    }
    results = {key: _throughput(d, loader, args.steps, device, recipe) for key, (_, d, loader) in cases.items()}
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"kdrun bench: {cfg.teacher.name} -> {cfg.student.name}, batch {bs}, {args.steps} steps per case, on "
          f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), torch "
          f"{torch.__version__}")
    for key, (label, _, _) in cases.items():
        print(f"  ({key}) {label:<52} {results[key]:>10,.0f} images/s")
    ratios = {"c/a": results["c"] / results["a"], "c/d": results["c"] / results["d"]}
    print(f"  (c)/(a) = {ratios['c/a']:.2f}  (target >= 0.9: KD with cached logits costs about what the student alone does)")
    print(f"  (c)/(d) = {ratios['c/d']:.2f}  (target >= 3: against the usual DataLoader + live teacher)")
    print(f"  peak memory: {peak:,.0f} MiB ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    world_sizes = [int(w) for w in args.world_sizes.split(",") if w.strip()]
    ddp = _ddp_case(world_sizes, args.steps, args.overrides) if world_sizes else {}
    for world, value in ddp.items():
        print(f"  (e) (c) with DDP, torchrun --nproc_per_node={world:<2} (global batch {bs})       {value:>10,.0f} images/s")
    if {1, 2} <= ddp.keys():
        print(f"  (e) world size 2 / 1 = {ddp[2] / ddp[1]:.2f}")
    return {**results, **ratios, "peak_mib": peak, "ddp": ddp}


def _scratch_dir():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="kdrun-bench-"))


if __name__ == "__main__":
    main()
