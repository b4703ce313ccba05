"""GPU check for issue 13 (after training): the deployment report's CUDA path (batch-64 throughput on
the run's device, with synchronisation), evaluate/export of a model trained on CUDA, and how long
measuring a large model takes. Run from the repository root: `python gpu_checks/13.py` (~1-2 min).
Prints numbers; exits non-zero if a check fails."""
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from kdrun.config import register_configs  # noqa: E402
from kdrun.deploy import measure  # noqa: E402
from kdrun.export import evaluate, export_model  # noqa: E402
from kdrun.models import build_model  # noqa: E402
from kdrun.run import run  # noqa: E402

assert torch.cuda.is_available(), "no CUDA device"
tmp = Path(tempfile.mkdtemp())
register_configs()
overrides = ["dataset=fake", "dataset.channels=3", "dataset.image_size=32", "dataset.mean=[0.5,0.5,0.5]",
             "dataset.std=[0.25,0.25,0.25]", "dataset.num_train=2048", "dataset.num_test=512", "teacher=resnet18",
             "student=mobilenetv3_small", "teacher.epochs=2", "epochs=2", "device=cuda", "progress=false",
             f"teacher_cache={tmp / 'teachers'}"]
with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
    cfg = compose("config", overrides=overrides)
t0 = time.time()
summary = run(cfg, tmp / "run")
print(f"run on {summary['device']} in {time.time() - t0:.1f} s (amp=auto, channels_last=auto)")
for role in ("teacher", "student"):
    print(role, summary[role]["arch"], "test_acc", summary[role]["test_acc"], json.dumps(summary[role]["deploy"]))
print("compression", json.dumps(summary["compression"]))
ok = all(summary[r]["deploy"]["throughput_device"].startswith("cuda") for r in ("teacher", "student"))

for device in ("cpu", "cuda"):
    result = evaluate(tmp / "run", device=device)
    print(f"kdrun-eval on {device}: acc {result['acc']} (the run's test_acc {summary['student']['test_acc']})")
    ok &= abs(result["acc"] - summary["student"]["test_acc"]) <= 2 / 512  # bf16/channels_last training, fp32 eval
exported = export_model(tmp / "run", "onnx")
print("onnx export check", json.dumps(exported["check"]))
ok &= exported["check"]["ok"]

for arch, size in (("resnet50", 224), ("resnet18", 32)):
    model = build_model(arch, 1000 if size == 224 else 10, 3, size)
    t0 = time.time()
    d = measure(model, (3, size, size), torch.device("cuda"))
    print(f"measure({arch} @ {size}px) took {time.time() - t0:.1f} s:", json.dumps(d))
print("ALL OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
