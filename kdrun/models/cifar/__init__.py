"""The CIFAR family of the knowledge-distillation literature, exactly as RepDistiller (Tian et al.,
"Contrastive Representation Distillation", ICLR 2020; HobbitLong/RepDistiller, models/) and
mdistiller (Zhao et al., CVPR 2022) define it: the same modules, parameter counts and state_dict
keys, so that their published teachers load with `teacher.checkpoint=...` as they are.

Every model is registered as `cifar_<name>` (never confusable with a torchvision name), with a
config option of the same name in configs/model/, teacher/ and student/.
"""
from __future__ import annotations

import logging
from pathlib import Path

from kdrun import KdrunError

log = logging.getLogger(__name__)

# kdrun name -> RepDistiller's (its model_dict keys, and the <name>_vanilla/ folders of its teachers).
REPDISTILLER_NAMES = {
    **{f"cifar_resnet{d}": f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)},
    "cifar_resnet8x4": "resnet8x4", "cifar_resnet32x4": "resnet32x4",
    **{f"cifar_wrn_{d}_{k}": f"wrn_{d}_{k}" for d in (16, 40) for k in (1, 2)},
    **{f"cifar_vgg{d}": f"vgg{d}" for d in (8, 11, 13, 16, 19)},
    "cifar_mobilenetv2": "mobile_half", "cifar_shufflev1": "ShuffleV1", "cifar_shufflev2": "ShuffleV2",
    "cifar_resnet50": "ResNet50",
}
CIFAR_MODELS = frozenset(REPDISTILLER_NAMES)
# The file RepDistiller's scripts/fetch_pretrained_teachers.sh (and mdistiller's cifar_teachers.tar)
# put each published teacher in, under its save/models/ (cifar_teachers/) folder.
PUBLISHED_FILE = "{name}_vanilla/ckpt_epoch_240.pth"


def checkpoint_file(path: str | Path, arch: str, setting: str = "teacher.checkpoint") -> Path:
    """A checkpoint file as given, or, for a folder, the published teacher of `arch` in it (RepDistiller's
    layout), so that one `teacher.checkpoint=save/models` serves every pair of a sweep."""
    path = Path(path)
    if not path.is_dir():
        return path
    if arch not in REPDISTILLER_NAMES:
        raise KdrunError(f"{setting}={path} is a folder, which is read in RepDistiller's layout "
                         f"(<name>_vanilla/ckpt_epoch_240.pth) for the CIFAR models only, not {arch}: give the file")
    file = path / PUBLISHED_FILE.format(name=REPDISTILLER_NAMES[arch])
    if not file.is_file():
        raise KdrunError(f"{setting}={path}: a folder of published teachers should hold {file} for {arch} "
                         "(RepDistiller's scripts/fetch_pretrained_teachers.sh layout); give the file instead")
    return file


_warned: set[str] = set()


def warn_small_maps(layer_report: list[dict], student_arch: str, teacher_arch: str | None) -> str | None:
    """Feature methods comparing maps of 2x2 pixels or fewer learn next to nothing from them: the usual
    cause is an ImageNet model (a stem that downsamples 4x) on 32x32 images. Warns once per message;
    returns it. CIFAR models are exempt (MobileNetV2's last 2x2 stage is RepDistiller's design)."""
    small = []
    for row in layer_report:
        for role, arch in (("student", student_arch), ("teacher", teacher_arch)):
            shape = row[f"{role}_shape"]
            if arch not in CIFAR_MODELS and len(shape) == 3 and shape[1] * shape[2] <= 4:
                small.append(f"{role} {arch} {row[role]} ({shape[1]}x{shape[2]}, kd.{row['method']})")
    if not small:
        return None
    message = ("feature maps of 2x2 pixels or fewer: " + ", ".join(dict.fromkeys(small)) + ". An ImageNet model's "
               "stem shrinks small images 4x at once; for 32x32 data use the CIFAR models (teacher=cifar_resnet32x4 "
               "student=cifar_resnet8x4, cifar_wrn_40_2, cifar_vgg13, ...: see the README's CIFAR-100 benchmark)")
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
    return message


from kdrun.models.cifar import mobilenetv2, resnet, resnet50, shufflenet, vgg, wrn  # noqa: E402,F401  (registers them)
