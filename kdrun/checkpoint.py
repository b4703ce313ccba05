"""Checkpoints: written atomically, read with weights_only=True so a file can never run code."""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdrun import KdrunError, distributed

log = logging.getLogger(__name__)


def save_checkpoint(obj: Any, path: Path) -> None:
    """Writes to a temporary file in the same folder, then renames: a crash never leaves half a file.
    Under DDP rank 0 alone writes (every process holds the same state)."""
    if not distributed.is_main():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Through a Python file: a full disk is an OSError that says so (torch's own writer, given a
        # path, reports it as a failed assertion in its zip code).
        with open(tmp, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except OSError as e:
        raise unwritable(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def unwritable(path: Path, error: OSError) -> KdrunError:
    """The one line for a file kdrun cannot write: a full disk, a read-only folder, a name too long."""
    return KdrunError(f"cannot write {path} ({error.strerror or error}): free some space, or make the folder "
                      "writable; then run again with resume=true to continue from the last saved epoch")


def load_checkpoint(path: Path, setting: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise KdrunError(f"{setting}={path}: no such file; give the path of a checkpoint (.pt) file")
    try:
        with path.open("rb") as f:
            # torch.save writes a zip archive (before PyTorch 1.6, a pickle): anything else is no checkpoint.
            is_torch = f.read(4) == b"PK\x03\x04" or f.seek(0) == 0 and f.read(1) == b"\x80"
    except OSError as e:
        raise KdrunError(f"{setting}={path}: could not read it ({e.strerror or e})") from None
    if not is_torch:
        raise KdrunError(f"{setting}={path}: not a PyTorch checkpoint (not a file written by torch.save); give the "
                         "path of a .pt file saved with torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = _first_line(e)
        raise KdrunError(
            f"{setting}={path}: refused, it holds more than tensors and plain values ({first}); kdrun loads "
            "weights only (torch.load(weights_only=True)): save model.state_dict() instead"
        ) from None
    except OSError as e:
        raise KdrunError(f"{setting}={path}: could not read it ({e.strerror or e})") from None
    except Exception as e:  # EOFError, RuntimeError (zip), KeyError...: a checkpoint cut short or altered
        raise KdrunError(f"{setting}={path}: a damaged PyTorch checkpoint, cut short or altered ({_first_line(e)})") \
            from None


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0][:160] if lines else type(e).__name__)


def weights_record(model: nn.Module, arch: str, num_classes: int, in_channels: int, **extra: Any) -> dict:
    """The format of every model file kdrun writes: the weights plus what they fit."""
    return {"arch": arch, "num_classes": num_classes, "in_channels": in_channels, "model": model.state_dict(), **extra}


def load_weights(model: nn.Module, path: Path, setting: str, arch: str, num_classes: int, in_channels: int,
                 **meta: Any) -> dict:
    """Loads a kdrun weights file (or a bare state_dict) into `model`, with a clear error on a mismatch.
    `meta` is the rest of kdrun.models.model_meta(): the file's recorded input size and normalisation
    are compared with it (a warning: the weights fit, but were trained on differently fed images)."""
    obj = load_checkpoint(path, setting)
    record = obj if isinstance(obj, dict) and "model" in obj else {"model": obj}
    expected = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels}
    for key, want in expected.items():
        if key in record and record[key] != want:
            raise KdrunError(
                f"{setting}={path}: the file holds a model with {key}={record[key]}, but this run builds "
                f"{arch} with {num_classes} classes and {in_channels} input channel(s): pick the matching "
                "model/dataset or another checkpoint"
            )
    for key in ("image_size", "mean", "std"):
        if record.get(key) is not None and meta.get(key) is not None and record[key] != meta[key]:
            log.warning("%s=%s: its model was trained with %s=%s, this run feeds it %s=%s", setting, path, key,
                        record[key], key, meta[key])
    try:
        model.load_state_dict(record["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        detail = " ".join(str(e).split())[:300]
        raise KdrunError(f"{setting}={path}: the weights do not fit {arch} with {num_classes} classes ({detail})") from None
    return record


def write_json_atomic(path: Path, obj: Any) -> None:
    import json

    if not distributed.is_main():  # rank 0 alone writes (summary.json, meta.json, ...)
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise unwritable(path, e) from None
