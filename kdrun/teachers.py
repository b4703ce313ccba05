"""The teacher cache: a teacher is trained once per digest of what determines it, then reused.

outputs/teachers/<digest>/ holds teacher.pt (best-on-validation weights), meta.json (its config and
test results) and the files of its training (checkpoints, metrics.jsonl). Jobs that start together
take a file lock, so exactly one trains while the others wait and then load it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Dict

import torch
from filelock import FileLock
from omegaconf import OmegaConf
from torch import nn

from kdrun import KdrunError, distributed
from kdrun.checkpoint import load_checkpoint, load_weights, save_checkpoint, write_json_atomic
from kdrun.config import ensemble_combine, plain, teacher_members
from kdrun.losses.response import ensemble_logits
from kdrun.engine import MetricsLog, evaluate, fit, reseed
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config, count_parameters, logits_of, model_meta, pretrained_of, weights_identity
from kdrun.models.cifar import checkpoint_file
from kdrun.rundir import cannot_write
from kdrun.speed import amp_dtype, speed_settings

log = logging.getLogger(__name__)

# The run's settings that say how (fast) models train, which an ensemble's members train with too.
SPEED_KEYS = ("amp", "channels_last", "compile", "cuda_graphs")

# Bump when a change in kdrun would train a different teacher from the same config, or the digest is
# computed from the same things differently (3: every teacher and dataset key counts, also at its default).
CACHE_FORMAT = 3
# Dataset keys that say where the data lives or how it is read, not what it is.
_NOT_IDENTITY = {"root", "num_workers", "prefetch_factor", "download"}


def teacher_seed(cfg) -> int:
    return cfg.seed if cfg.teacher.seed is None else cfg.teacher.seed


def teacher_digest(cfg, data_fingerprint: str = "", precision: str = "") -> str:
    """sha256 over the architecture, training recipe, dataset settings (split, augmentation), the
    data itself (DataBundle.fingerprint: a cache never serves a teacher of other data that sits
    at the same path), seed, and the mixed precision it trains in, if any (kdrun.speed)."""
    teacher = {k: v for k, v in plain(cfg.teacher).items() if k not in ("checkpoint", "seed", "members", "ensemble_seeds")}
    weights = weights_identity(cfg.teacher)
    if weights:  # the weights themselves: `true` is the library's current default, which a release may change
        teacher["pretrained"] = weights
    dataset = {k: v for k, v in plain(cfg.dataset).items() if k not in _NOT_IDENTITY}
    identity = {"format": CACHE_FORMAT, "teacher": teacher, "dataset": dataset, "seed": teacher_seed(cfg),
                "data": data_fingerprint, **({"precision": precision} if precision else {})}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def test_report(model: nn.Module, data, device, best_epoch=None, best_val_acc=None) -> dict:
    """The test-set numbers of a finished model (the test set is read once, here)."""
    test = evaluate(model, data.loader("test", 1024), device)
    top5 = {"test_acc5": test["acc5"]} if "acc5" in test else {}
    return {"params": count_parameters(model), "test_acc": test["acc"], **top5, "test_errors": test["errors"],
            "test_images": test["images"], "best_val_epoch": best_epoch, "best_val_acc": best_val_acc}


class Ensemble(nn.Module):
    """Frozen teachers whose combined logits (kdrun.losses.response.ensemble_logits) stand in for
    one teacher's, so every logit-based method distils from the ensemble unchanged."""

    def __init__(self, members: Dict[str, nn.Module], combine: str, T: float):
        super().__init__()
        self.members = nn.ModuleDict({name.replace(".", "_"): m for name, m in members.items()})
        self.combine, self.T = combine, float(T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_logits([logits_of(m(x)) for m in self.members.values()], self.combine, self.T)


def get_teachers(cfg, data, device, run_metrics: MetricsLog, progress: bool, should_stop: Callable[[], bool],
                 T: float, train: bool = True):
    """The teacher, or the Ensemble of its members (teacher=[a,b,...] or teacher.ensemble_seeds), each
    from the cache, a checkpoint or trained; returns (model, info for summary.json)."""
    members = teacher_members(cfg)
    if list(members) == ["teacher"]:
        return get_teacher(cfg, data, device, run_metrics, progress, should_stop, train)
    models, infos = {}, {}
    for name, node in members.items():
        member_cfg = OmegaConf.create({"teacher": plain(node), "dataset": plain(cfg.dataset), "seed": cfg.seed,
                                       "teacher_cache": cfg.teacher_cache, **{k: cfg[k] for k in SPEED_KEYS}})
        models[name], infos[name] = get_teacher(member_cfg, data, device, run_metrics, progress, should_stop, train,
                                                label=f"teacher.{name}")
    combine = ensemble_combine(cfg)
    ensemble = Ensemble(models, combine, T).to(device)
    report = test_report(ensemble, data, device) if train else {}
    return ensemble, {"arch": "ensemble of " + "+".join(infos), "source": "ensemble",
                      "combine": combine, "T": float(T), **report, "members": infos}


def get_teacher(cfg, data, device, run_metrics: MetricsLog, progress: bool, should_stop: Callable[[], bool],
                train: bool = True, label: str = "teacher"):
    """Returns (frozen teacher on device, info for summary.json). With train=False (a dry run) a
    teacher that is not cached yet is returned untrained. `label` names its lines in the run's
    metrics.jsonl (an ensemble's members are teacher.<member>)."""
    node = cfg.teacher
    reseed(teacher_seed(cfg), "teacher")
    model = build_from_config(node, data)
    meta = model_meta(node, data)
    if node.checkpoint:
        path = checkpoint_file(node.checkpoint, node.name)  # a folder: RepDistiller's published teachers
        load_weights(model, path, "teacher.checkpoint", **meta)
        model.to(device)
        info = {"arch": node.name, "source": "checkpoint", "path": str(path.resolve())}
        return model, {**info, **test_report(model, data, device)}
    published = pretrained_of(model)
    if published and published["num_classes"] == data.num_classes:
        # Published weights for as many classes as the data has (ImageNet's, in torchvision's order,
        # which is the sorted order of ImageNet's class folders): the teacher as it is, no training.
        model.to(device)
        info = {"arch": node.name, "source": "pretrained", "weights": published["weights"], "path": published["file"]}
        return model, {**info, **(test_report(model, data, device) if train else {})}

    digest = teacher_digest(cfg, data.fingerprint, _precision(cfg, device))
    folder = Path(cfg.teacher_cache).resolve() / digest
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".lock").touch()
    except OSError as e:
        raise cannot_write("teacher_cache", Path(cfg.teacher_cache), e) from None
    weights, meta_file = folder / "teacher.pt", folder / "meta.json"
    # Under DDP rank 0 holds the lock and its view of the cache decides; the ranks train together.
    with distributed.main_holds(FileLock(str(folder / ".lock"))):
        if not train and not meta_file.exists():
            return model.to(device), {"arch": node.name, "source": "untrained (dry run)", "digest": digest}
        if distributed.from_main(weights.exists() and meta_file.exists()):
            source = "cache"
            log.info("teacher %s: loaded from the cache (%s)", node.name, folder)
        else:
            source = "trained"
            log.info("teacher %s: training it into the cache (%s)", node.name, folder)
            _train_into(folder, digest, model, cfg, data, device, meta, progress, should_stop)
            # The run's own metrics get the teacher's whole history (also when it resumed a partial one).
            for record in MetricsLog(folder / "metrics.jsonl").read():
                run_metrics.write({**record, "model": label})
        try:
            load_weights(model, weights, "teacher cache", **meta)
            trained = json.loads(meta_file.read_text())["report"]
        except (KdrunError, ValueError, KeyError) as e:
            raise KdrunError(f"{str(e).rstrip('.')}; delete {folder} to train the teacher again") from None
    model.to(device)
    # Measured on this run's data (the cache says how the teacher was trained, not how well it does here).
    report = trained if source == "trained" else \
        test_report(model, data, device, trained.get("best_val_epoch"), trained.get("best_val_acc"))
    fine_tuned = {"weights": published["weights"]} if published else {}  # the published weights it started from
    return model, {"arch": node.name, "source": source, **fine_tuned, "path": str(weights), "digest": digest, **report}


def _precision(cfg, device) -> str:
    """The autocast dtype a teacher trains in ('' for full precision): part of its digest."""
    dtype = amp_dtype(cfg.amp, device)
    return "" if dtype is None else str(dtype).removeprefix("torch.")


def _train_into(folder: Path, digest: str, model, cfg, data, device, meta, progress, should_stop) -> None:
    node = cfg.teacher
    # The run's speed settings (mixed precision, channels-last, CUDA graphs) train the teacher too.
    speed = speed_settings(cfg, device, model)
    if speed["channels_last"]:
        model.to(memory_format=torch.channels_last)
    trainer = Distiller(model, label_smoothing=node.label_smoothing, **speed).to(device)
    # A partial teacher (an interrupted job) resumes from its last epoch: its digest says it is the same.
    result = fit(trainer, data, node, node.epochs, device, folder, "teacher", MetricsLog(folder / "metrics.jsonl"),
                 seed=teacher_seed(cfg), resume=True, config_digest=digest, meta=meta,
                 progress=progress, should_stop=should_stop)
    load_weights(model, result.best_path, "teacher checkpoint", **meta)
    report = test_report(model, data, device, result.best_epoch, result.best_val_acc)
    if distributed.is_main():
        # Done: the best weights become teacher.pt; the resume state (with the optimizer's) is not needed.
        result.best_path.replace(folder / "teacher.pt")
        (folder / "teacher_last.pt").unlink(missing_ok=True)
    # Written last: its presence is what marks the cached teacher complete.
    write_json_atomic(folder / "meta.json", {"digest": digest, "teacher": plain(node),
                                             "dataset": plain(cfg.dataset), "seed": teacher_seed(cfg),
                                             "report": report})
    distributed.barrier()  # the others read what rank 0 wrote


def cached_train_logits(teacher: nn.Module, data, device, folder: Path, digest: str) -> torch.Tensor:
    """The teacher's logits on every training image (un-augmented, in the split's order), computed
    once and kept beside the cached teacher, so that runs and sweep jobs with un-augmented student
    inputs read them instead of running the teacher at every step."""
    path = folder / "train_logits.pt"
    with distributed.main_holds(FileLock(str(folder / ".lock"))):
        if distributed.from_main(path.exists()):
            record = load_checkpoint(path, "teacher logit cache")
            if record["digest"] == digest and tuple(record["logits"].shape) == (data.sizes["train"], data.num_classes):
                return record["logits"]
        teacher.eval()
        with torch.no_grad():  # under DDP each process its shard, then gathered once
            logits = torch.cat([logits_of(teacher(x.to(device))).float().cpu() for x, _ in data.loader("train", 1024)])
        logits = distributed.gather_shards(logits, data.sizes["train"])
        save_checkpoint({"digest": digest, "logits": logits}, path)
    return logits
