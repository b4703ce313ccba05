"""After training: load a model kdrun trained, evaluate it on any compatible dataset, export it.

- `load_model(path_or_run_dir, which="student")` -> (eval-mode nn.Module, ModelInfo: what feeds it)
- `evaluate(path_or_run_dir, overrides)` -> top-1/top-5, per-class accuracy, confusion matrix
- `export_model(path_or_run_dir, fmt)` -> ONNX, TorchScript or safetensors, checked on real test images
- the `kdrun-eval` and `kdrun-export` commands over them.

Every model file kdrun writes records what rebuilds and feeds its model (kdrun.models.model_meta).
A file written before it did is filled in from its run's `.hydra/config.yaml` (or the teacher
cache's meta.json) where it can be, and what is still missing can be passed to load_model().
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun import KdrunError

log = logging.getLogger(__name__)

# What a model file records beside arch/num_classes/in_channels (kdrun.models.model_meta).
RECORDED = ("library", "target", "kwargs", "image_size", "min_input_size", "mean", "std", "classes",
            "first_conv_rebuilt", "dataset")
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}


@dataclass
class ModelInfo:
    """What rebuilds a model and feeds it: `preprocess()` turns images into its input."""

    arch: str  # with `library` (timm) or `target` (your own factory) where the model comes from there
    num_classes: int
    in_channels: int
    image_size: Optional[int]
    mean: Optional[list]
    std: Optional[list]
    min_input_size: Optional[int] = None
    library: Optional[str] = None
    target: Optional[str] = None
    kwargs: dict = field(default_factory=dict)
    classes: Optional[list] = None
    first_conv_rebuilt: bool = False  # a torchvision model whose first Conv2d takes in_channels (kdrun.models.tv)
    dataset: Optional[dict] = None  # the dataset config it was trained on
    path: str = ""
    missing: list = field(default_factory=list)  # what an older file did not record (filled in or unknown)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (0-255) or floats in [0, 1], (N, C, H, W) or one (C, H, W), brought to the
        model's input as kdrun's test pipeline brought its dataset's images: for dataset=imagenet the
        shorter side resized to dataset.resize_size (image_size * 256/224 by default), then the centre
        image_size x image_size crop; otherwise resized to image_size x image_size (as image_folder
        does; the in-memory datasets are at that size already). Bilinear with antialiasing, as
        torchvision's Resize. Then normalised with the model's mean/std."""
        from torchvision.transforms import functional as TF

        if self.mean is None or self.std is None:
            raise KdrunError(f"{self.path}: the file does not record its normalisation (mean/std): pass them to "
                             "load_model(..., mean=[...], std=[...])")
        x = images.unsqueeze(0) if images.dim() == 3 else images
        x = x.float() / 255 if not x.is_floating_point() else x.float()
        size = self.image_size
        if size and (self.dataset or {}).get("name") == "imagenet":
            # kdrun.data.builders.imagenet's evaluation transform: Resize(resize), CenterCrop(size)
            from kdrun.data.builders import imagenet_resize

            resize = imagenet_resize(size, self.dataset.get("resize_size"))
            x = TF.center_crop(TF.resize(x, resize, antialias=True), [size, size])
        elif size and tuple(x.shape[-2:]) != (size, size):
            x = TF.resize(x, [size, size], antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def card(self) -> dict:
        """The JSON recorded beside an export: everything but where the file came from."""
        return {k: v for k, v in asdict(self).items() if k not in ("path", "missing")}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def checkpoint_path(path, which: str = "student") -> Path:
    """The model file of `which` (student, teacher, teacher.<member>, peerN, genN, ...) in a run
    directory, or `path` itself when it is a file."""
    path = Path(path)
    if path.is_file():
        return path
    ckpt = path / "checkpoints"
    summary = _read_json(path / "summary.json")
    shared = summary.get("shared_from")  # a sweep's kd=none job that took another's result
    if not ckpt.is_dir() and shared and (path.parent / shared).is_dir():
        return checkpoint_path(path.parent / shared, which)
    if not ckpt.is_dir():
        raise KdrunError(f"{path}: neither a checkpoint file nor a run directory (with checkpoints/): give one of them")
    own = ckpt / f"{which}_best.pt"
    if own.is_file():
        return own
    teacher = _read_json(ckpt / "teacher.json")
    if which == "teacher" and teacher.get("members"):
        raise KdrunError(f"{path}: its teacher is an ensemble: load one member, which=teacher.<member> "
                         f"({', '.join('teacher.' + m for m in teacher['members'])})")
    if which == "teacher" and teacher.get("source") == "pretrained":
        raise KdrunError(f"{path}: its teacher is {teacher['arch']} with the published weights {teacher.get('weights')}, "
                         "used as they are, not a model kdrun wrote: build it as the run did (teacher.pretrained)")
    if which == "teacher" and teacher.get("path"):
        return Path(teacher["path"])
    if which.startswith("teacher.") and which[8:] in (teacher.get("members") or {}):
        return Path(teacher["members"][which[8:]]["path"])
    alias = _alias(summary, which)
    if alias and (ckpt / f"{alias}_best.pt").is_file():
        return ckpt / f"{alias}_best.pt"
    if which == "student" and "(epochs=0)" in (summary.get("student") or {}).get("source", ""):
        raise KdrunError(f"{path}: this run trained no student (epochs=0): load its teacher (which=teacher)")
    names = sorted(p.name[: -len("_best.pt")] for p in ckpt.glob("*_best.pt")) + (["teacher"] if teacher else [])
    raise KdrunError(f"{path}: has no {which} model; choose one of: {', '.join(names) or '(none)'}")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _alias(summary: dict, which: str) -> Optional[str]:
    """The model behind a summary's `student`/`teacher` entry in the multi-model schemes: the best peer
    (online), the generation it names (born-again's teacher) or the one it is a copy of (its student)."""
    entry, models = summary.get(which), summary.get("models") or {}
    if not entry:
        return None
    for name in (entry.get("peer"), entry.get("source")):
        if name in models:
            return name
    return next((name for name, info in models.items() if info == entry), None)


def _siblings(file: Path) -> tuple[Optional[dict], Optional[dict], str]:
    """(model config, dataset config, where from) for a file written before kdrun recorded them: its
    run's .hydra/config.yaml, or the teacher cache's meta.json."""
    from omegaconf import OmegaConf

    run_config = file.parent.parent / ".hydra" / "config.yaml"
    if file.parent.name == "checkpoints" and run_config.is_file():
        cfg = OmegaConf.to_container(OmegaConf.load(run_config), resolve=False)
        node = cfg.get("teacher") if file.name.startswith("teacher") else cfg.get("student")
        return node, cfg.get("dataset"), str(run_config)
    meta = _read_json(file.parent / "meta.json")
    if meta.get("teacher"):
        return meta["teacher"], meta.get("dataset"), str(file.parent / "meta.json")
    return None, None, ""


def _data_dir(data_dir: Optional[str]) -> str:
    return data_dir or os.environ.get("KDRUN_DATA_DIR") or "./data"


def _complete(record: dict, file: Path, given: dict, data_dir: Optional[str]) -> tuple[dict, list]:
    """Fills in what an older file did not record: from `given`, then its run's config, then its
    dataset (built on the CPU, for the input size and class names). Returns (record, what it lacked)."""
    missing = [k for k in RECORDED if k not in record]
    if not missing:
        return record, []
    record = {**record, **{k: v for k, v in given.items() if k in missing}}
    node, dataset, source = _siblings(file)
    if node is not None:
        record.setdefault("kwargs", node.get("kwargs") or {})
        for key in ("min_input_size", "library", "target"):
            record.setdefault(key, node.get(key))
    if dataset is not None:
        record.setdefault("dataset", dataset)
        record.setdefault("mean", dataset.get("mean"))
        record.setdefault("std", dataset.get("std"))
        if "image_size" not in record or "classes" not in record:
            try:
                data = _build(dataset, data_dir)
                record.setdefault("image_size", data.image_size)
                record.setdefault("classes", data.classes)
            except KdrunError as e:
                log.warning("%s: its dataset could not be read for the input size and class names (%s)", file, e)
    record.setdefault("kwargs", {})
    from kdrun.models import rebuilds_first_conv

    record.setdefault("first_conv_rebuilt", rebuilds_first_conv(record["arch"], record["in_channels"],
                                                                record.get("library"), record.get("target")))
    unknown = [k for k in missing if record.get(k) is None and k not in ("min_input_size", "library", "target")]
    log.warning("%s was written before kdrun recorded how to rebuild and feed its model: it lacks %s%s%s", file,
                ", ".join(missing), f"; filled in from {source}" if source else "",
                f"; still unknown: {', '.join(unknown)} (pass them to load_model(..., key=value))" if unknown else "")
    return record, missing


def load_model(path, which: str = "student", device="cpu", data_dir: Optional[str] = None,
               **given: Any) -> tuple[nn.Module, ModelInfo]:
    """The model `which` of a run directory (student, teacher, teacher.<member>, peerN, genN...) or a
    kdrun model file, rebuilt, loaded and in eval mode on `device`, and its ModelInfo. `given`
    (image_size=, mean=, std=, kwargs=, classes=...) fills in what a file from an older kdrun lacks."""
    from kdrun.checkpoint import load_checkpoint
    from kdrun.models import build_model

    file = checkpoint_path(path, which)
    obj = load_checkpoint(file, "checkpoint")
    if not (isinstance(obj, dict) and "model" in obj and "arch" in obj):
        raise KdrunError(f"{file}: a bare state_dict that does not say which model it holds: load it into your "
                         "model yourself, or give a model file kdrun wrote (checkpoints/<model>_best.pt)")
    state = obj["model"]
    if any(k.startswith("head.") for k in state):
        raise KdrunError(f"{file}: an exit head's file (scheme=self_byot: the backbone and one head), which "
                         "load_model does not rebuild; load the student (which=student)")
    record, missing = _complete({k: v for k, v in obj.items() if k != "model"}, file, given, data_dir)
    if record.get("image_size") is None:
        raise KdrunError(f"{file}: its input size is unknown (a file from an older kdrun whose dataset could not be "
                         "read): pass it, load_model(..., image_size=28), or set data_dir")
    model = build_model(record["arch"], record["num_classes"], record["in_channels"], record["image_size"],
                        record.get("min_input_size"), target=record.get("target"), library=record.get("library"),
                        **(record.get("kwargs") or {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise KdrunError(f"{file}: the weights do not fit {record['arch']} ({' '.join(str(e).split())[:300]})") from None
    info = ModelInfo(arch=record["arch"], num_classes=record["num_classes"], in_channels=record["in_channels"],
                     image_size=record["image_size"], mean=record.get("mean"), std=record.get("std"),
                     min_input_size=record.get("min_input_size"), library=record.get("library"),
                     target=record.get("target"), kwargs=record.get("kwargs") or {},
                     classes=record.get("classes"), first_conv_rebuilt=bool(record.get("first_conv_rebuilt")),
                     dataset=record.get("dataset"), path=str(file), missing=missing)
    return model.to(device).eval(), info


# ---------------------------------------------------------------------------------------------
# Evaluating
# ---------------------------------------------------------------------------------------------

def _build(dataset: dict, data_dir: Optional[str], device="cpu"):
    from omegaconf import OmegaConf

    from kdrun.config import DatasetConfig
    from kdrun.data import build_data

    node = OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                           {k: v for k, v in dataset.items() if k in DatasetConfig.__dataclass_fields__})
    return build_data(node, _data_dir(data_dir), torch.device(device))


def dataset_config(info: ModelInfo, overrides: Sequence[str] = ()) -> tuple[dict, Optional[str]]:
    """The dataset to evaluate on: the one the model was trained on, or another option
    (`dataset=NAME`), with `dataset.key=value` overrides; the model's own normalisation unless
    dataset.mean/std are given. Returns (dataset config, data_dir or None)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from kdrun.config import DatasetConfig, config_dir

    for o in overrides:
        if not o.startswith(("dataset=", "dataset.", "data_dir=")) or "=" not in o:
            raise KdrunError(f"{o}: only the dataset can be set here (dataset=NAME, dataset.key=value, data_dir=PATH)")
    values = dict(o.split("=", 1) for o in overrides)
    if "dataset" not in values and not info.dataset:
        raise KdrunError(f"{info.path}: the file does not record its dataset: name one (dataset=mnist)")
    name = values.get("dataset") or info.dataset["name"]
    option = config_dir() / "dataset" / f"{name}.yaml"
    if not option.is_file():
        known = ", ".join(sorted(p.stem for p in option.parent.glob("*.yaml")))
        raise KdrunError(f"dataset={name}: no such dataset option; choose one of {known}")
    given = {k[len("dataset."):]: v for k, v in values.items() if k.startswith("dataset.")}
    # The recorded dataset as the run built it, unless another one is named; then the model's own
    # normalisation (it was trained on it), then what the command line says.
    recorded = info.dataset if "dataset" not in values else {}
    layers = [OmegaConf.load(option), {k: v for k, v in recorded.items() if k in DatasetConfig.__dataclass_fields__},
              {k: list(getattr(info, k)) for k in ("mean", "std") if getattr(info, k)},
              OmegaConf.from_dotlist([f"{k}={v}" for k, v in given.items()])]
    try:
        node = OmegaConf.merge(OmegaConf.structured(DatasetConfig), *layers)
    except OmegaConfBaseException as e:
        raise KdrunError(f"dataset: {' '.join(str(e).split())[:200]}") from None
    return OmegaConf.to_container(node, resolve=True), values.get("data_dir")


@torch.no_grad()
def evaluate(path, overrides: Sequence[str] = (), which: str = "student", device="cpu",
             data_dir: Optional[str] = None, batch_size: int = 1024, **given: Any) -> dict:
    """Test accuracy (top-1 and top-5), per-class accuracy and the confusion matrix of a model kdrun
    trained (a run directory or a model file), on its own dataset or any compatible one (`overrides`:
    dataset=NAME, dataset.key=value, data_dir=PATH). No training."""
    from kdrun.models import logits_of
    from kdrun.step import topk_correct

    model, info = load_model(path, which, device, data_dir, **given)
    node, override_dir = dataset_config(info, overrides)
    data = _build(node, override_dir or data_dir, device)
    if (data.num_classes, data.in_channels) != (info.num_classes, info.in_channels):
        raise KdrunError(f"dataset={node['name']}: {data.num_classes} classes of {data.in_channels}-channel images, "
                         f"but the model ({info.arch}) was trained on {info.num_classes} classes of "
                         f"{info.in_channels}-channel images: choose a compatible dataset")
    n = info.num_classes
    confusion = torch.zeros(n, n, dtype=torch.long)
    top5, loss, k = 0, 0.0, min(5, n)
    for x, y in data.loader("test", batch_size):
        x, y = x.to(device), y.to(device)
        try:
            logits = logits_of(model(x)).float()
        except RuntimeError as e:
            raise KdrunError(f"dataset={node['name']}: the model ({info.arch}, trained on {info.image_size}px images) "
                             f"cannot take its {data.image_size}px images ({' '.join(str(e).split())[:200]})") from None
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top5 += topk_correct(logits, y, k).item()
        confusion += torch.bincount((y * n + logits.argmax(1)).cpu(), minlength=n * n).view(n, n)
    images = int(confusion.sum())
    correct = int(confusion.diag().sum())
    classes = info.classes or data.classes or [str(i) for i in range(n)]
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1).float()
    return {"path": info.path, "arch": info.arch, "dataset": node["name"], "split": "test", "images": images,
            "acc": correct / images, "errors": images - correct, f"acc{k}": top5 / images, "loss": loss / images,
            "per_class_acc": {c: round(float(a), 6) for c, a in zip(classes, per_class)},
            "classes": list(classes), "confusion": confusion.tolist(), "missing": info.missing}


# ---------------------------------------------------------------------------------------------
# Exporting
# ---------------------------------------------------------------------------------------------

def _test_images(info: ModelInfo, overrides: Sequence[str], data_dir: Optional[str], count: int) -> tuple:
    node, override_dir = dataset_config(info, overrides)
    data = _build(node, override_dir or data_dir)
    return next(iter(data.loader("test", count)))[0], node["name"]


def _export_onnx(model: nn.Module, x: torch.Tensor, out: Path, card: dict) -> torch.Tensor:
    import onnx
    import onnxruntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x[:2],), input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    proto = program.model_proto
    for key, value in {"kdrun": json.dumps(card), "mean": json.dumps(card["mean"]), "std": json.dumps(card["std"]),
                       "image_size": str(card["image_size"]), "classes": json.dumps(card["classes"])}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def _export_torchscript(model: nn.Module, x: torch.Tensor, out: Path, card: dict) -> torch.Tensor:
    with warnings.catch_warnings():  # TorchScript is deprecated by PyTorch (2.9+), and says so at every call
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x[:2])
        torch.jit.save(traced, str(out), _extra_files={"kdrun.json": json.dumps(card)})
        loaded = torch.jit.load(str(out), map_location="cpu")
    return loaded(x)


def _export_safetensors(model: nn.Module, x: torch.Tensor, out: Path, card: dict) -> torch.Tensor:
    from safetensors.torch import load_model as load_safetensors
    from safetensors.torch import save_model

    from kdrun.models import build_model

    save_model(model, str(out), metadata={"kdrun": json.dumps(card)})
    fresh = build_model(card["arch"], card["num_classes"], card["in_channels"], card["image_size"],
                        card["min_input_size"], target=card["target"], library=card["library"], **card["kwargs"])
    load_safetensors(fresh, str(out))
    return fresh.eval()(x)


CHECKED_WITH = {"onnx": "onnxruntime", "torchscript": "torch.jit.load", "safetensors": "a model rebuilt from the file"}


@torch.no_grad()
def export_model(path, fmt: str, out=None, which: str = "student", overrides: Sequence[str] = (),
                 data_dir: Optional[str] = None, images: int = 256, atol: float = 1e-4, **given: Any) -> dict:
    """Exports a model kdrun trained to `fmt` (onnx, torchscript, safetensors) with its preprocessing
    (in the file's metadata where the format has it, and in <out>.json beside it), then checks it on the
    spot: the exported model's logits on `images` real test images must match PyTorch's within `atol`
    (relative to the largest logit). Raises KdrunError when they do not; the file stays, for inspection,
    and its card records the failed check (`"ok": false`)."""
    if fmt not in FORMATS:
        raise KdrunError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if images < 1:
        raise KdrunError(f"--images {images}: the export is checked on that many real test images: give 1 or more "
                         "(256 by default)")
    model, info = load_model(path, which, "cpu", data_dir, **given)
    file = Path(info.path)
    if out is None:
        base = Path(path) / "export" / which if Path(path).is_dir() else file.with_name(file.name.split(".")[0])
        out = base.with_name(base.name + FORMATS[fmt])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x, dataset = _test_images(info, overrides, data_dir, images)
    reference = model(x)
    card = {**info.card(), "format": fmt, "input": "images: float32 (N, C, H, W), normalised with mean/std",
            "output": "logits: float32 (N, num_classes)"}
    exported = {"onnx": _export_onnx, "torchscript": _export_torchscript, "safetensors": _export_safetensors}[fmt](
        model, x, out, card)
    diff = float((exported - reference).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    agree = float((exported.argmax(1) == reference.argmax(1)).float().mean())
    check = {"images": len(x), "dataset": dataset, "checked_with": CHECKED_WITH[fmt], "max_abs_diff": diff,
             "tolerance": atol * scale, "top1_agreement": agree, "ok": diff <= atol * scale}
    card_path = out.with_name(out.name + ".json")
    card_path.write_text(json.dumps({**card, "source": str(file), "check": check}, indent=2) + "\n")
    result = {"format": fmt, "out": str(out), "card": str(card_path), "bytes": out.stat().st_size, "which": which,
              "arch": info.arch, "missing": info.missing, "check": check}
    if not check["ok"]:
        raise KdrunError(f"{out}: the exported model's logits differ from PyTorch's by up to {diff:.3g} on {len(x)} "
                         f"test images (tolerance {atol * scale:.3g}): do not ship it (it is left there to inspect; "
                         f"{card_path.name} records the check, ok: false)")
    return result


# ---------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------

def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("path", type=Path, metavar="RUN_DIR_or_CHECKPOINT")
    parser.add_argument("overrides", nargs="*", metavar="dataset=NAME|dataset.KEY=VALUE|data_dir=PATH",
                        help="the dataset (default: the one the model was trained on)")
    parser.add_argument("--which", default="student", help="student (default), teacher, teacher.<member>, peerN, genN")
    parser.add_argument("-o", "--out", type=Path, help="where to write")
    return parser


def eval_main(argv: Optional[list] = None) -> None:
    """The `kdrun-eval` command. It returns None: a console script exits with what its function returns,
    and any other value would be printed to stderr and end the command with status 1."""
    eval_cli(argv)


def eval_cli(argv: Optional[list] = None) -> dict:
    """`kdrun-eval RUN_DIR_or_CHECKPOINT [dataset overrides]`: top-1/top-5, per-class accuracy and a
    confusion matrix PNG, without training; returns the results it wrote."""
    from rich.console import Console
    from rich.table import Table

    from kdrun import plots

    parser = _parser("kdrun-eval", "Test accuracy (top-1/top-5), per-class accuracy and the confusion matrix of a "
                                   "model kdrun trained, on its dataset or any compatible one; no training.")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps")
    args = parser.parse_intermixed_args(argv)  # the dataset overrides before, between or after the flags
    try:
        result = evaluate(args.path, args.overrides, args.which, args.device)
    except KdrunError as e:
        sys.exit(f"kdrun-eval: error: {e}")
    out = args.out or (args.path / "eval" if args.path.is_dir() else args.path.with_name(args.path.stem + "_eval"))
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.which}_{result['dataset']}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plots.confusion_matrix(out / f"{stem}_confusion.png", result["confusion"], result["classes"],
                           f"{args.which} ({result['arch']}) on {result['dataset']} test: {100 * result['acc']:.2f}%")
    console = Console() if sys.stdout.isatty() else Console(width=120)
    table = Table(title=f"per-class test accuracy, {result['dataset']}")
    for column in ("class", "test acc", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for c, row in zip(result["classes"], result["confusion"]):
        table.add_row(c, f"{100 * result['per_class_acc'][c]:.2f}%", str(sum(row)))
    console.print(table)
    top5 = next(k for k in result if k.startswith("acc") and k != "acc")
    print(f"{args.which} ({result['arch']}, {result['path']}) on {result['dataset']} test: top-1 "
          f"{100 * result['acc']:.2f}% ({result['errors']} errors of {result['images']}), top-{top5[3:]} "
          f"{100 * result[top5]:.2f}%. Written to {out}: {stem}.json, {stem}_confusion.png")
    return result


def export_main(argv: Optional[list] = None) -> None:
    """The `kdrun-export` command (returns None, as `eval_main`)."""
    export_cli(argv)


def export_cli(argv: Optional[list] = None) -> dict:
    """`kdrun-export RUN_DIR_or_CHECKPOINT --format onnx|torchscript|safetensors [--out PATH]`; returns
    what it wrote and how the export was checked."""
    parser = _parser("kdrun-export", "Export a model kdrun trained (the student by default) with its preprocessing, "
                                     "and check the export against PyTorch on real test images.")
    parser.add_argument("--format", required=True, choices=list(FORMATS))
    parser.add_argument("--images", type=int, default=256, help="test images the export is checked on (256)")
    args = parser.parse_intermixed_args(argv)
    try:
        result = export_model(args.path, args.format, args.out, args.which, args.overrides, images=args.images)
    except KdrunError as e:
        sys.exit(f"kdrun-export: error: {e}")
    except ImportError as e:
        sys.exit(f"kdrun-export: error: {e.name} is not installed: pip install 'kdrun[export]'")
    c = result["check"]
    print(f"exported {result['which']} ({result['arch']}) to {result['out']} ({result['bytes']:,} bytes); its "
          f"preprocessing is in {result['card']}" + (" and in the file's metadata" if args.format != "safetensors"
                                                     else " and in the file's header metadata"))
    print(f"checked: {c['checked_with']} gives PyTorch's logits on {c['images']} {c['dataset']} test images "
          f"(max |difference| {c['max_abs_diff']:.2g} <= {c['tolerance']:.2g}; the same top-1 class on "
          f"{100 * c['top1_agreement']:.1f}% of them)")
    if args.format == "torchscript":
        print("note: PyTorch deprecates TorchScript (2.9+); ONNX is the format to prefer")
    return result
