"""GPU check for issue 15 (soft decision tree): distil into a depth-8 tree on CUDA eagerly in fp32,
with the training step replayed as a CUDA graph (cuda_graphs=auto) in fp32, and in bf16 autocast,
and print what should hold. Run from the repository root:
    PYTHONPATH=$PWD python gpu_checks/15.py
Expect: every run finishes with finite losses, the penalty's moving averages stay float32, the
graphed fp32 run is within a fraction of a point of the eager one (its moving averages advance
inside the replayed step), and bf16 within a few points (fake data, 3 epochs)."""
import json
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from kdrun.config import register_configs
from kdrun.run import run

register_configs()
root = Path(__file__).resolve().parent.parent
with tempfile.TemporaryDirectory() as tmp:
    for amp, graphs in (("off", "off"), ("off", "auto"), ("bf16", "auto")):
        with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3"):
            cfg = compose("config", overrides=[
                "dataset=fake", "dataset.num_train=2048", "teacher=mlp800", "teacher.epochs=2", "student=soft_tree",
                "kd=hinton", "T=1", "epochs=3", "device=cuda", f"amp={amp}", f"cuda_graphs={graphs}", "progress=false",
                f"teacher_cache={tmp}/teachers"])
        out = Path(tmp) / f"{amp}-{graphs}"
        summary = run(cfg, out)
        lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        last = [l for l in lines if l["model"] == "student"][-1]
        state = torch.load(out / "checkpoints" / "student_last.pt", weights_only=True)["model"]
        print(f"amp={amp} cuda_graphs={graphs}: test_acc={summary['student']['test_acc']:.4f} device={summary['device']} "
              f"loss={last['train/loss']:.4f} loss_tree_penalty={last['train/loss_tree_penalty']:.4f} "
              f"ema dtype={state['ema_num'].dtype} ema_den[0]={float(state['ema_den'][0]):.4f} images/s={last['images_per_sec']:.0f}")
