"""Heo, Kim, Yun, Park, Kwak & Choi (2019), "A Comprehensive Overhaul of Feature Distillation"
(ICCV): the student's pre-ReLU features, through a connector (1x1 convolution + batch norm), learn
the teacher's pre-ReLU features passed through a margin ReLU, with a partial L2 distance that
ignores what the teacher's ReLU would drop anyway. The margin of each channel is the expected
negative response, E[x | x < 0], from the statistics of the teacher's batch norm before that layer.

As in the authors' CIFAR-100 code (clovaai/overhaul-distillation): layer i of n is weighted
2^(i - n + 1) (the deepest 1), the distance is summed and divided by the batch, the overall weight
is 1/1000, and the connectors start from their initialisation (He-normal convolution, BN at 1, 0).
The batch norm that gives a layer its margins is found by running the teacher once: the last one
that ran, with as many channels, before the layer's output was read."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from kdrun import KdrunError
from kdrun.losses.feature import ofd_loss, ofd_margin
from kdrun.methods.base import Batch, KDMethod, adapter, match_spatial


def _connector(student_shape, teacher_shape) -> nn.Module:
    module = adapter(student_shape, teacher_shape)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
    return module


def batch_norms_before(model: nn.Module, paths: Sequence[str], x: torch.Tensor) -> Dict[str, Optional[nn.Module]]:
    """For each layer path (`name` or `name:input`, as FeatureTap reads them), the batch norm that ran
    last, with as many channels as the layer's tensor, before the layer's (last) reading."""
    last: Dict[int, nn.Module] = {}
    found: Dict[str, Optional[nn.Module]] = {}
    handles = [m.register_forward_hook(lambda mod, args, out: last.__setitem__(mod.num_features, mod))
               for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for path in paths:
        name, _, kind = path.partition(":")
        module = model.get_submodule(name)

        def note(t, path=path):
            t = t[0] if isinstance(t, (tuple, list)) else t
            found[path] = last.get(t.shape[1])

        if kind == "input":
            handles.append(module.register_forward_pre_hook(lambda mod, args, note=note: note(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda mod, args, out, note=note: note(out)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


class OFD(KDMethod):
    layer_kind = "preact"

    def __init__(self, weight: float = 1e-3, student_layers: Optional[Sequence[str]] = None,
                 teacher_layers: Optional[Sequence[str]] = None):
        super().__init__(weight, student_layers, teacher_layers)

    def setup(self, student_feats, teacher_feats) -> None:
        self.adapters = nn.ModuleList(_connector(s.shape, t.shape) for s, t in zip(student_feats, teacher_feats))
        # Filled from the teacher's batch norms in prepare(); zeros (a plain ReLU) until then.
        for i, t in enumerate(teacher_feats):
            self.register_buffer(f"margin{i}", torch.zeros(t.shape[1], device=t.device))

    def prepare(self, teacher: nn.Module, data, device: torch.device, seed: int) -> None:
        x, _ = next(iter(data.loader("train", 2)))
        norms = batch_norms_before(teacher, self.teacher_layers, x.to(device))
        for i, path in enumerate(self.teacher_layers):
            bn = norms.get(path)
            if bn is None or not bn.affine:
                raise KdrunError(
                    f"kd.{self.name}: the teacher's layer {path!r} follows no batch norm with as many channels (OFD "
                    "takes its margins from that batch norm's statistics): use a teacher with batch norm, or set "
                    f"kd.{self.name}.teacher_layers to pre-ReLU layers right after one")
            getattr(self, f"margin{i}").copy_(ofd_margin(bn.weight.detach(), bn.bias.detach()))

    def loss(self, batch: Batch) -> torch.Tensor:
        n = len(self.adapters)
        return sum(2.0 ** (i - n + 1) * ofd_loss(*match_spatial(connector(s), t), getattr(self, f"margin{i}"))
                   for i, (connector, s, t) in enumerate(zip(self.adapters, batch.student_feats, batch.teacher_feats)))
