"""GPU check of issue 11 (DDP): the CUDA path that the CPU tests (gloo) cannot reach, on one GPU.

Runs from the repository root, in about a minute: `python gpu_checks/11.py`. Prints what it measured and
one line per check, `ok` or `FAIL`. Three torchrun launches of one process each (one GPU: NCCL refuses two
processes on the same device):
1. device=auto under torchrun -> cuda:0, NCCL + gloo process group, DDP over a ResNet-18 student with
   sync_bn=true (SyncBatchNorm), a teacher trained by DDP into the cache, amp=auto (bf16);
2. the same command stopped by SIGTERM to torchrun after the first student epoch, then resumed: the final
   student metrics equal those of run 1 to 1e-3 (GPU kernels need not be bitwise reproducible);
3. `python -m kdrun.bench --world-sizes 1` on the GPU: images/s of case (e) with DDP on one process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["dataset=fake", "dataset.channels=3", "dataset.image_size=32", "dataset.num_train=2048", "teacher=resnet18",
        "student=resnet18", "teacher.epochs=1", "epochs=3", "sync_bn=true", "progress=false", "device=auto"]


def torchrun(*args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "kdrun", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="kdrun-gpu11-"))
    cache = f"teacher_cache={home / 'teachers'}"
    start = time.time()
    proc = torchrun(*ARGS, cache, f"hydra.run.dir={home / 'full'}", cwd=home)
    out, err = proc.communicate(timeout=300)
    check("1 torchrun on cuda", proc.returncode == 0, f"(rc {proc.returncode}, {time.time() - start:.0f} s)")
    if proc.returncode != 0:
        print(out[-3000:], err[-6000:])
        return
    summary = json.loads((home / "full" / "summary.json").read_text())
    check("1 device cuda:0, world size 1", summary["device"] == "cuda:0" and summary["world_size"] == 1,
          f"({summary['device']}, world {summary['world_size']})")
    print(f"     teacher test acc {summary['teacher']['test_acc']:.4f} ({summary['teacher']['source']}), student "
          f"{summary['student']['test_acc']:.4f}, wall {summary['wall_time_s']} s")
    lines = [json.loads(x) for x in (home / "full" / "metrics.jsonl").read_text().splitlines()]
    print("     student images/s per epoch:", [round(r["images_per_sec"]) for r in lines if r["model"] == "student"])

    cut = home / "cut"
    proc = torchrun(*ARGS, cache, f"hydra.run.dir={cut}", cwd=home)
    last = cut / "checkpoints" / "student_last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    check("2 SIGTERM stops the run", proc.returncode != 0 and "kdrun: interrupted" in err, f"(rc {proc.returncode})")
    proc = torchrun(*ARGS, cache, "resume=true", f"hydra.run.dir={cut}", cwd=home)
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        print(out[-3000:], err[-6000:])
    resumed = json.loads((cut / "summary.json").read_text())["student"] if (cut / "summary.json").exists() else {}
    check("2 resume finishes like the full run", abs(resumed.get("test_acc", -1) - summary["student"]["test_acc"]) < 1e-3,
          f"(test acc {resumed.get('test_acc')} vs {summary['student']['test_acc']})")

    bench = subprocess.run([sys.executable, "-m", "kdrun.bench", "--steps", "200", "--world-sizes", "1", "device=cuda"],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                           timeout=300)
    check("3 make bench with the DDP case on cuda", bench.returncode == 0)
    print(bench.stdout[-2500:] if bench.returncode == 0 else bench.stderr[-4000:])


if __name__ == "__main__":
    main()
