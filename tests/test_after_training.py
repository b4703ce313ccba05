"""After training: the deployment report, checkpoints that rebuild their model, load/evaluate/export
(kdrun-eval, kdrun-export, checked with onnxruntime), epochs=0. One tiny KD run and one scratch run on
fake data, shared by the module's tests."""
from __future__ import annotations

import copy
import csv
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import kdrun
from kdrun import KdrunError
from kdrun.checkpoint import load_weights
from kdrun.data import build_data
from kdrun.export import ModelInfo, eval_cli, eval_main, evaluate, export_cli, export_main, load_model
from kdrun.models import build_model, count_parameters, model_meta
from kdrun.run import run
from tests.conftest import ROOT, make_cfg
from tests.datasets import write_imagenet_tree

CPU = torch.device("cpu")
# 28x28, one channel, 10 classes: teacher mlp1200, student mlp800 (the defaults); TINY turns the report off
FAKE = ["dataset=fake", "deploy_report=true"]
# Multiply-adds of the matrix products, counted by hand (biases and ReLUs are not multiply-adds).
MACS = {"mlp1200": 784 * 1200 + 1200 * 1200 + 1200 * 10, "mlp800": 784 * 800 + 800 * 800 + 800 * 10}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("after_training")
    cfg = make_cfg(*FAKE, tmp=tmp)
    kd = run(cfg, tmp / "kd")
    scratch = run(make_cfg(*FAKE, "kd=none", tmp=tmp), tmp / "scratch")
    return {"tmp": tmp, "cfg": cfg, "kd": kd, "scratch": scratch, "dir": tmp / "kd"}


# --- the deployment report ---------------------------------------------------------------------

def test_deploy_figures_are_present_and_sane(runs):
    summary = runs["kd"]
    for role, arch in (("teacher", "mlp1200"), ("student", "mlp800")):
        entry = summary[role]
        d = entry["deploy"]
        params = count_parameters(build_model(arch, 10, 1, 28))
        assert d["params"] == params == entry["params"]
        assert d["macs"] == MACS[arch] and d["flops"] == 2 * MACS[arch]
        assert 4 * params < d["weights_bytes"] < 4 * params + 65536  # float32 weights and the file's framing
        assert d["cpu_latency_ms"] > 0 and d["cpu_latency_runs"] >= 3
        assert d["throughput"] > 0 and d["throughput_device"] == "cpu" and d["throughput_batch"] == 64
    t, s, c = summary["teacher"]["deploy"], summary["student"]["deploy"], summary["compression"]
    assert c["params"] == pytest.approx(t["params"] / s["params"], abs=1e-3)
    assert c["macs"] == pytest.approx(MACS["mlp1200"] / MACS["mlp800"], abs=1e-3)
    assert c["cpu_latency"] == pytest.approx(t["cpu_latency_ms"] / s["cpu_latency_ms"], abs=1e-3)
    assert c["test_acc_delta"] == pytest.approx(summary["student"]["test_acc"] - summary["teacher"]["test_acc"])
    assert json.loads((runs["dir"] / "summary.json").read_text())["compression"] == c
    assert "compression" in runs["scratch"] and runs["scratch"]["compression"] is None  # no teacher to compare


def test_measure_takes_the_device_as_a_string_or_a_torch_device():
    """kdrun.measure(model, (C, H, W), device), the public API: "cpu" as load_model/evaluate take it."""
    for device in ("cpu", CPU):
        d = kdrun.measure(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), (1, 28, 28), device)
        assert (d["macs"], d["flops"], d["params"]) == (7840, 2 * 7840, 7850) and d["throughput_device"] == "cpu"


def test_the_end_of_run_table_shows_the_deployment_report(runs, capsys):
    from kdrun.report import print_summary

    print_summary(runs["kd"])
    out = capsys.readouterr().out
    assert "mult-adds" in out and "CPU ms" in out and "1.28 M" in out  # the student's 1,275,200 multiply-adds
    assert f"student vs teacher: {runs['kd']['compression']['params']:.3g}x fewer parameters" in out


def test_the_sweep_summary_has_deployment_columns_and_a_tradeoff_plot(runs, tmp_path):
    from kdrun.plots import tradeoff
    from kdrun.sweep import read_jobs, summarise, to_csv, to_markdown

    summary = summarise(read_jobs([runs["tmp"] / "kd", runs["tmp"] / "scratch"]))
    rows = {r["job"]: r for r in csv.DictReader(to_csv(summary.columns, summary.rows).splitlines())}
    kd = rows["kd"]
    assert int(kd["student_macs"]) == MACS["mlp800"] and int(kd["teacher_macs"]) == MACS["mlp1200"]
    assert float(kd["student_cpu_latency_ms"]) == runs["kd"]["student"]["deploy"]["cpu_latency_ms"]
    assert int(rows["scratch"]["student_params"]) == runs["scratch"]["student"]["params"]
    assert "| student_macs | student_cpu_latency_ms |" in to_markdown(summary.columns, summary.rows)
    tradeoff(tmp_path / "tradeoff.png", summary.rows, "accuracy against cost")  # what write_report() draws
    assert (tmp_path / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def test_the_tradeoff_plot_draws_one_star_per_teacher(tmp_path):
    """Every job of a sweep measures its (cached, shared) teacher's CPU latency anew: one star per
    teacher (its multiply-adds and accuracy), at the median latency, not one per job."""
    from kdrun.plots import tradeoff

    def row(job, teacher_macs, teacher_ms):
        return {"job": job, "status": "ok", "student_macs": 100, "student_cpu_latency_ms": 0.5,
                "student_test_acc": 0.9, "teacher_macs": teacher_macs, "teacher_cpu_latency_ms": teacher_ms,
                "teacher_test_acc": 0.95}

    rows = [row("0", 1000, 1.0), row("1", 1000, 1.4), row("2", 1000, 0.9), row("3", 5000, 3.0)]
    fig = tradeoff(tmp_path / "tradeoff.png", rows, "accuracy against cost")
    stars = [[c for c in ax.collections if c.get_label() == "teacher"][0].get_offsets().tolist() for ax in fig.axes]
    assert stars == [[[1000, 95], [5000, 95]], [[1.0, 95], [3.0, 95]]]


# --- checkpoints that rebuild and feed their model ---------------------------------------------

def test_every_model_file_records_what_rebuilds_and_feeds_the_model(runs):
    for path in (runs["dir"] / "checkpoints" / "student_best.pt", runs["dir"] / "checkpoints" / "student_last.pt",
                 runs["kd"]["teacher"]["path"]):
        record = torch.load(path, weights_only=True)
        assert record["arch"] in ("mlp800", "mlp1200") and (record["num_classes"], record["in_channels"]) == (10, 1)
        assert (record["image_size"], record["mean"], record["std"]) == (28, [0.5], [0.25])
        node = runs["cfg"].student if record["arch"] == "mlp800" else runs["cfg"].teacher
        assert record["classes"] == [str(i) for i in range(10)] and record["kwargs"] == dict(node.kwargs)
        assert record["min_input_size"] is None and record["first_conv_rebuilt"] is False
        assert record["library"] is None and record["target"] is None
        assert record["dataset"]["name"] == "fake" and record["dataset"]["num_test"] == 256


def test_a_torchvision_student_records_its_rebuilt_first_conv_and_loads_back(tmp_path):
    """A 1-channel torchvision model does not load into the stock model; load_model rebuilds it."""
    import torchvision

    data = build_data(make_cfg(*FAKE, "dataset.num_train=16", "dataset.num_test=8").dataset, "/unused", CPU)
    node = OmegaConf.create({"name": "mobilenet_v3_small", "kwargs": {"dropout": 0.1}, "min_input_size": 32})
    model = build_model("mobilenet_v3_small", 10, 1, 28, 32, dropout=0.1).eval()
    meta = model_meta(node, data)
    assert meta["first_conv_rebuilt"] is True and meta["min_input_size"] == 32
    torch.save({**meta, "model": model.state_dict()}, tmp_path / "student_best.pt")
    with pytest.raises(RuntimeError):  # the stock model's first convolution takes 3 channels
        torchvision.models.mobilenet_v3_small(num_classes=10).load_state_dict(model.state_dict())
    loaded, info = load_model(tmp_path / "student_best.pt")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x)) and info.first_conv_rebuilt and info.kwargs == {"dropout": 0.1}


# --- load_model, evaluate, kdrun-eval ------------------------------------------------------------

def test_load_model_reproduces_the_run_test_accuracy_exactly(runs):
    model, info = kdrun.load_model(runs["dir"])
    assert not model.training and info.arch == "mlp800" and info.missing == []
    data = build_data(runs["cfg"].dataset, "/unused", CPU)
    x, y = next(iter(data.loader("test", 1024)))
    assert (model(x).argmax(1) == y).float().mean().item() == runs["kd"]["student"]["test_acc"]
    # preprocess() feeds raw images as the run fed them
    raw = (x * 0.25 * 255 + 0.5 * 255).round().to(torch.uint8)
    assert torch.allclose(info.preprocess(raw), x, atol=1e-5)
    teacher, _ = kdrun.load_model(runs["dir"], which="teacher")
    assert (teacher(x).argmax(1) == y).float().mean().item() == runs["kd"]["teacher"]["test_acc"]


def test_preprocess_resizes_and_crops_as_the_recorded_dataset_tested(tmp_path):
    """dataset=imagenet tests on the shorter side resized to resize_size and the centre image_size crop:
    preprocess() feeds a non-square image the same way (image_folder resizes both sides to image_size)."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import functional as TF

    write_imagenet_tree(tmp_path / "imagenet", classes=("n01", "n02"), train=2, val=1, shape=(30, 40))
    cfg = make_cfg("dataset=imagenet", "dataset.image_size=16", "dataset.resize_size=20", "dataset.num_workers=0")
    data = build_data(cfg.dataset, str(tmp_path), CPU)
    info = ModelInfo(arch="resnet18", num_classes=2, in_channels=3, image_size=16, mean=list(cfg.dataset.mean),
                     std=list(cfg.dataset.std), dataset=data.config)
    fed = next(iter(data.loader("test", 2)))[0][0]  # val/n01/0.png as the run tested it
    image = Image.open(tmp_path / "imagenet" / "val" / "n01" / "0.png").convert("RGB")
    raw = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, 30, 40) uint8
    x = info.preprocess(raw)
    assert x.shape == (1, 3, 16, 16) and (x[0] - fed).abs().max() < 0.05  # PIL's and torch's resizing round apart
    # image_folder: both sides resized to image_size (another image from the same file)
    squashed = ModelInfo(**{**info.__dict__, "dataset": {**data.config, "name": "image_folder"}}).preprocess(raw)
    mean, std = torch.tensor(info.mean).view(3, 1, 1), torch.tensor(info.std).view(3, 1, 1)
    assert (squashed[0] - (TF.to_tensor(TF.resize(image, [16, 16])) - mean) / std).abs().max() < 0.05
    assert (squashed[0] - fed).abs().max() > 0.5


def test_kdrun_eval_reproduces_the_summary_and_writes_the_confusion_matrix(runs, tmp_path, capsys):
    result = eval_cli([str(runs["dir"]), "--out", str(tmp_path)])
    student = runs["kd"]["student"]
    assert (result["acc"], result["errors"], result["images"]) == (student["test_acc"], student["test_errors"], 256)
    assert result["acc5"] >= result["acc"] and sum(map(sum, result["confusion"])) == 256
    assert set(result["per_class_acc"]) == {str(i) for i in range(10)}
    assert json.loads((tmp_path / "student_fake.json").read_text())["acc"] == result["acc"]
    assert (tmp_path / "student_fake_confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert f"top-1 {100 * student['test_acc']:.2f}%" in capsys.readouterr().out
    # another compatible dataset: the same generator with fewer test images
    assert evaluate(runs["dir"], ["dataset.num_test=64"])["images"] == 64
    with pytest.raises(KdrunError, match=r"^dataset=fake: 5 classes of 1-channel images, but the model"):
        evaluate(runs["dir"], ["dataset.num_classes=5"])
    with pytest.raises(SystemExit, match=r"^kdrun-eval: error: .*has no peer1 model; choose one of: student, teacher"):
        eval_main([str(runs["dir"]), "--which", "peer1"])


def test_the_commands_take_dataset_overrides_after_their_flags(runs, tmp_path):
    """The README's usage puts [dataset overrides] after the flags."""
    result = eval_cli([str(runs["dir"]), "--which", "teacher", "--out", str(tmp_path), "dataset.num_test=32"])
    assert result["images"] == 32 and (tmp_path / "teacher_fake.json").is_file()
    out = str(tmp_path / "s.safetensors")
    assert export_cli([str(runs["dir"]), "--format", "safetensors", "--out", out, "dataset.num_test=32"])[
        "check"]["images"] == 32
    assert export_cli([str(runs["dir"]), "--format", "safetensors", "--out", out, "--images", "64"])[
        "check"]["images"] == 64
    with pytest.raises(SystemExit, match=r"^kdrun-export: error: --images 0: .*1 or more"):
        export_cli([str(runs["dir"]), "--format", "safetensors", "--out", out, "--images", "0"])


def test_the_commands_and_the_export_extra_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["kdrun-eval"] == "kdrun.export:eval_main"
    assert project["scripts"]["kdrun-export"] == "kdrun.export:export_main"
    assert any(d.startswith("onnxruntime") for d in project["optional-dependencies"]["export"])
    assert "export" in (ROOT / "Makefile").read_text().split("pip install --quiet -e '.[")[1].split("]")[0]


def test_the_installed_commands_exit_0_and_print_no_python_dict(runs, tmp_path):
    """A console script exits with what its function returns: a dict would go to stderr, status 1."""
    bin_dir = Path(sys.executable).parent
    for args in (["kdrun-eval", str(runs["dir"]), "--out", str(tmp_path)],
                 ["kdrun-export", str(runs["dir"]), "--format", "safetensors", "--out", str(tmp_path / "s.safetensors")]):
        proc = subprocess.run([str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "{'" not in proc.stderr, (args[0], proc.stderr[-2000:])
    assert (tmp_path / "student_fake.json").exists() and (tmp_path / "s.safetensors").exists()


def test_import_kdrun_stays_light():
    code = "import sys, kdrun; assert 'torch' not in sys.modules and 'load_model' in kdrun.__all__; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip() == "ok", proc.stderr


# --- export ----------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_exports_match_pytorch_on_real_test_images(runs, tmp_path, capsys):
    import onnx
    import onnxruntime
    from safetensors import safe_open
    from safetensors.torch import load_model as load_safetensors

    model, info = load_model(runs["dir"])
    data = build_data(runs["cfg"].dataset, "/unused", CPU)
    x = next(iter(data.loader("test", 256)))[0]
    reference = model(x).detach()

    export_main([str(runs["dir"]), "--format", "onnx", "--out", str(tmp_path / "s.onnx")])
    assert "checked: onnxruntime gives PyTorch's logits on 256 fake test images" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(None, {"images": x[:100].numpy()})[0])  # another batch size
    assert torch.allclose(logits, reference[:100], atol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "s.onnx")).metadata_props}
    assert json.loads(props["mean"]) == [0.5] and json.loads(props["kdrun"])["arch"] == "mlp800"

    export_main([str(runs["dir"]), "--format", "torchscript", "--out", str(tmp_path / "s.pt")])
    extra = {"kdrun.json": ""}
    scripted = torch.jit.load(str(tmp_path / "s.pt"), _extra_files=extra)
    assert torch.allclose(scripted(x), reference, atol=1e-5) and json.loads(extra["kdrun.json"])["image_size"] == 28

    export_main([str(runs["dir"]), "--format", "safetensors", "--out", str(tmp_path / "s.safetensors")])
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        card = json.loads(f.metadata()["kdrun"])
    fresh = build_model(card["arch"], card["num_classes"], card["in_channels"], card["image_size"]).eval()
    load_safetensors(fresh, str(tmp_path / "s.safetensors"))
    assert torch.equal(fresh(x), reference)
    beside = json.loads((tmp_path / "s.safetensors.json").read_text())
    assert beside["std"] == [0.25] and beside["check"]["ok"] and beside["check"]["max_abs_diff"] == 0


def test_an_export_that_differs_from_pytorch_is_refused_and_recorded(runs, tmp_path, monkeypatch):
    """A file whose weights are off (here the last bias + 1: the same top-1 class, other logits) fails the
    check: the command ends with one line, the file stays for inspection and its card says ok: false."""
    from kdrun import export

    real = export._export_safetensors

    def corrupted(model, x, out, card):
        model = copy.deepcopy(model)
        with torch.no_grad():
            list(model.parameters())[-1].add_(1.0)
        return real(model, x, out, card)

    monkeypatch.setattr(export, "_export_safetensors", corrupted)
    out = tmp_path / "s.safetensors"
    refused = (r"^kdrun-export: error: .*s\.safetensors: the exported model's logits differ from PyTorch's by up to "
               r"1 on 256 test images .*do not ship it \(it is left there to inspect; s\.safetensors\.json records "
               r"the check, ok: false\)$")
    with pytest.raises(SystemExit, match=refused):
        export_main([str(runs["dir"]), "--format", "safetensors", "--out", str(out)])
    check = json.loads((tmp_path / "s.safetensors.json").read_text())["check"]
    assert check["ok"] is False and check["max_abs_diff"] == pytest.approx(1.0, abs=1e-5)
    assert check["top1_agreement"] == 1.0 and out.is_file()


# --- a checkpoint written before this change ---------------------------------------------------

def test_a_checkpoint_from_before_this_change_still_loads_with_a_note(runs, tmp_path, caplog):
    record = torch.load(runs["dir"] / "checkpoints" / "student_best.pt", weights_only=True)
    old = {k: record[k] for k in ("arch", "num_classes", "in_channels", "model", "methods", "epoch", "val_acc")}
    torch.save(old, tmp_path / "old.pt")
    # as a teacher checkpoint, as before
    meta = model_meta(runs["cfg"].student, build_data(runs["cfg"].dataset, "/unused", CPU))
    load_weights(build_model("mlp800", 10, 1, 28), tmp_path / "old.pt", "teacher.checkpoint", **meta)
    # on its own it cannot say its input size: the note says what it lacks and how to give it
    with pytest.raises(KdrunError, match="its input size is unknown .* pass it, load_model"):
        load_model(tmp_path / "old.pt")
    assert "old.pt was written before kdrun recorded how to rebuild and feed its model: it lacks library, target, " \
           "kwargs, image_size, min_input_size, mean, std, classes, first_conv_rebuilt, dataset" in caplog.text
    model, info = load_model(tmp_path / "old.pt", image_size=28, mean=[0.5], std=[0.25])
    assert info.missing and info.mean == [0.5] and info.classes is None
    # in its run directory it is filled in from the run's .hydra/config.yaml
    run_dir = tmp_path / "run"
    shutil.copytree(runs["dir"], run_dir)
    shutil.copy(tmp_path / "old.pt", run_dir / "checkpoints" / "student_best.pt")
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(runs["cfg"], run_dir / ".hydra" / "config.yaml")
    result = evaluate(run_dir)
    assert result["acc"] == runs["kd"]["student"]["test_acc"] and "image_size" in result["missing"]


# --- epochs=0, deploy_report=false -------------------------------------------------------------

def test_epochs_0_reports_the_teacher_and_the_untrained_student(runs, tmp_path):
    summary = run(make_cfg(*FAKE, "epochs=0", "deploy_report=false", f"teacher_cache={runs['tmp'] / 'teachers'}"),
                  tmp_path / "run")
    assert summary["teacher"]["source"] == "cache" and summary["teacher"]["test_acc"] == runs["kd"]["teacher"]["test_acc"]
    assert summary["student"]["source"] == "untrained (epochs=0)" and summary["student"]["best_val_epoch"] is None
    assert "deploy" not in summary["student"] and "compression" not in summary  # deploy_report=false
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or "student" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(KdrunError, match="this run trained no student \\(epochs=0\\): load its teacher"):
        load_model(tmp_path / "run")
    with pytest.raises(KdrunError, match="^epochs=0: scheme=online trains every model with the student's epochs"):
        run(make_cfg(*FAKE, "epochs=0", "scheme=online"), tmp_path / "online")
