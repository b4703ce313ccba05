"""The CIFAR family is RepDistiller's, exactly: parameter counts, state_dict keys and shapes, and the
features its `forward(is_feat=True, preact=True)` returns, read here through the configs' layers.

The numbers below were computed by running RepDistiller's own models/ (HobbitLong/RepDistiller:
resnet.py, resnetv2.py, wrn.py, vgg.py, mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py) with
num_classes=100, outside this repository: `digest` is the first 16 hex digits of the sha256 of the
state_dict's "key:shape" lines, in order; the feature checksums are `checksum()` below of its
feature lists, with the weights filled by `fill()` and the input drawn as in `test_features...`.
"""
from __future__ import annotations

import hashlib

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.data import build_data
from kdrun.engine import make_optimizer, train_one_epoch
from kdrun.features import FeatureTap
from kdrun.methods.base import Distiller
from kdrun.models import build_from_config, build_model, count_parameters
from kdrun.models.cifar import REPDISTILLER_NAMES
from tests.conftest import CONFIGS, make_cfg

TINY_CIFAR = ["dataset=fake", "dataset.channels=3", "dataset.num_classes=100", "dataset.image_size=8",
              "dataset.num_train=8", "dataset.val_split=0", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]"]

REPDISTILLER = {  # kdrun option: (RepDistiller's name, parameters, state_dict entries, digest)
    "cifar_resnet8": ("resnet8", 83892, 56, "ac039310c98e68d8"),
    "cifar_resnet14": ("resnet14", 181108, 92, "92530df46a51a173"),
    "cifar_resnet20": ("resnet20", 278324, 128, "48702a589dcc22ab"),
    "cifar_resnet32": ("resnet32", 472756, 200, "e488f60b23a4db1c"),
    "cifar_resnet44": ("resnet44", 667188, 272, "fcf7a5a278e22506"),
    "cifar_resnet56": ("resnet56", 861620, 344, "1d3465ca54c565c3"),
    "cifar_resnet110": ("resnet110", 1736564, 668, "932a055377884f91"),
    "cifar_resnet8x4": ("resnet8x4", 1233540, 62, "4b191cfaf50907ea"),
    "cifar_resnet32x4": ("resnet32x4", 7433860, 206, "670cd82105052059"),
    "cifar_wrn_16_1": ("wrn_16_1", 180916, 82, "cc273e84a60cb768"),
    "cifar_wrn_16_2": ("wrn_16_2", 703284, 83, "28fc720be1913fd2"),
    "cifar_wrn_40_1": ("wrn_40_1", 569780, 226, "f8967803e64be646"),
    "cifar_wrn_40_2": ("wrn_40_2", 2255156, 227, "029bbe2cbcd6d721"),
    "cifar_vgg8": ("vgg8", 3965028, 37, "792c36c85a183c23"),
    "cifar_vgg11": ("vgg11", 9277284, 58, "7edcbfd7d4b24633"),
    "cifar_vgg13": ("vgg13", 9462180, 72, "adbafd0e22ce9038"),
    "cifar_vgg16": ("vgg16", 14774436, 93, "4b0f395fe5fbd954"),
    "cifar_vgg19": ("vgg19", 20086692, 114, "0820bef0b1c3cee0"),
    "cifar_mobilenetv2": ("mobile_half", 812836, 320, "67dd5adb2196190e"),
    "cifar_shufflev1": ("ShuffleV1", 949258, 296, "542ef1e4af09fe27"),
    "cifar_shufflev2": ("ShuffleV2", 1355528, 338, "db138f467cd82af3"),
    "cifar_resnet50": ("ResNet50", 23705252, 320, "01c941c55d8830fa"),
}

# RepDistiller's feature lists [f0, stages..., embedding], with preact=False and preact=True.
FEATURES = {
    "cifar_resnet8": ("relu", [98.4459, -1086.9251, 315.8863, 48.6355, 0.7714],
                      [98.4459, -1776.417, 844.7762, 55.0249, 0.7714]),
    "cifar_wrn_16_1": ("conv1", [40.8429, -2045.0808, 191.5322, -623.8862, -1.1226],
                       [40.8429, 329.3018, -57.5783, -16.7523, -1.1226]),
    "cifar_vgg8": ("relu0", [-2833.4744, 197.634, -173.9026, 4.5188, -49.6244, -3.1031],
                   [-2833.4744, 259.809, -281.9933, -22.2682, 14.6481, -3.1031]),
    "cifar_shufflev2": ("relu", [318.2384, -85.2281, 273.2477, 22.2438, 5.9732],
                        [318.2384, -1890.4338, -783.3895, -365.553, 5.9732]),
}


def digest(state_dict) -> str:
    return hashlib.sha256("\n".join(f"{k}:{tuple(v.shape)}" for k, v in state_dict.items()).encode()).hexdigest()[:16]


def fill(model: torch.nn.Module, seed: int = 0) -> None:
    """The same weights in any model with the same state_dict keys and shapes."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            value.copy_(torch.randn(value.shape, generator=g) * 0.2 + (1.0 if key.endswith("running_var") else 0.0))


def checksum(feat: torch.Tensor) -> float:
    """Position-weighted sum per batch: a permutation of channels or pixels changes it."""
    f = feat.double().flatten(1)
    return float((f * torch.linspace(-1, 1, f.shape[1], dtype=torch.float64)).sum())


def layers_of(option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / f"{option}.yaml").layers)


def test_the_family_is_repdistillers_whole_model_list():
    assert set(REPDISTILLER_NAMES) == set(REPDISTILLER)
    assert {v[0] for v in REPDISTILLER.values()} == set(REPDISTILLER_NAMES.values())


@pytest.mark.parametrize("option", sorted(REPDISTILLER))
def test_each_option_composes_builds_repdistillers_model_and_trains_one_step(option):
    cfg = make_cfg(f"teacher={option}", f"student={option}", *TINY_CIFAR)
    assert cfg.teacher.name == cfg.student.name == option and list(cfg.teacher.members) == [option]
    data = build_data(cfg.dataset, "/unused", torch.device("cpu"))
    model = build_from_config(cfg.student, data)  # 3 channels, 100 classes: RepDistiller's CIFAR-100 model
    _, params, entries, expected = REPDISTILLER[option]
    state = model.state_dict()
    assert (count_parameters(model), len(state), digest(state)) == (params, entries, expected)
    # One step on 8x8 images (any size works; 32x32 for all 22 models would cost seconds).
    x, y = next(iter(data.loader("train", 4, shuffle=True, augment=True)))
    metrics = train_one_epoch(Distiller(model), [(x, y)], make_optimizer(cfg.student, model.parameters()),
                              torch.device("cpu"), "one step", progress=False)
    assert metrics["train/loss"] > 0


@pytest.mark.parametrize("option", sorted(FEATURES))
def test_config_layers_read_repdistillers_features(option):
    """stem + layers.stages + layers.embedding give RepDistiller's feat list; with layers.preact for the
    stages, its preact=True list (batch-norm in training mode, as during distillation)."""
    stem, feats, preacts = FEATURES[option]
    layers = layers_of(option)
    model = build_model(option, num_classes=100, in_channels=3, image_size=32)
    fill(model)
    model.train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    paths = [stem, *layers["stages"], *layers["preact"], layers["embedding"]]
    with torch.no_grad(), FeatureTap(model, paths) as tap:
        model(x)
    got = [checksum(tap.outputs[p]) for p in [stem, *layers["stages"], layers["embedding"]]]
    got_pre = [checksum(tap.outputs[p]) for p in [stem, *layers["preact"], layers["embedding"]]]
    assert got == pytest.approx(feats, rel=1e-4, abs=1e-3)
    assert got_pre == pytest.approx(preacts, rel=1e-4, abs=1e-3)
