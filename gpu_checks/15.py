"""GPU check for issue 15 (soft decision tree): distil into a depth-8 tree on CUDA in fp32 and in
bf16 autocast, and print what should hold. Run from the repository root:
    PYTHONPATH=$PWD python gpu_checks/15.py
Expect: both runs finish with finite losses, the penalty's moving averages stay float32 on the
GPU, and the two test accuracies are within a few points of each other (fake data, 3 epochs)."""
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
    for amp in ("off", "bf16"):
        with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3"):
            cfg = compose("config", overrides=[
                "dataset=fake", "dataset.num_train=2048", "teacher=mlp800", "teacher.epochs=2", "student=soft_tree",
                "kd=hinton", "T=1", "epochs=3", "device=cuda", f"amp={amp}", "progress=false",
                f"teacher_cache={tmp}/teachers"])
        summary = run(cfg, Path(tmp) / amp)
        lines = [json.loads(l) for l in (Path(tmp) / amp / "metrics.jsonl").read_text().splitlines()]
        last = [l for l in lines if l["model"] == "student"][-1]
        state = torch.load(Path(tmp) / amp / "checkpoints" / "student_last.pt", weights_only=True)["model"]
        print(f"amp={amp}: test_acc={summary['student']['test_acc']:.4f} device={summary['device']} "
              f"loss={last['train/loss']:.4f} loss_tree_penalty={last['train/loss_tree_penalty']:.4f} "
              f"ema dtype={state['ema_num'].dtype} images/s={last['images_per_sec']:.0f}")
