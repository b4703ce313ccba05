"""The parts every method shares (after mdistiller): the Distiller runs the student and the frozen
teacher on a batch, taps the layers the methods read, and owns the cross-entropy term; each KD
method only adds its own term (and any adapters it trains with the student)."""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun import KdrunError
from kdrun.features import FeatureTap
from kdrun.models import logits_of
from kdrun.speed import MixedPrecision


@dataclass
class Batch:
    """What a KD term may look at: the labels, both models' logits, and the layers it asked for."""

    labels: torch.Tensor
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_feats: List[torch.Tensor] = field(default_factory=list)
    teacher_feats: List[torch.Tensor] = field(default_factory=list)
    index: Optional[torch.Tensor] = None  # each sample's position in the training split (methods with needs_index)


def default_layers(kind: str, layers) -> list[str]:
    """The layers a method of this kind reads by default, from a model config's `layers`."""
    stages = list(layers.stages)
    if kind == "stages":
        return stages
    if kind == "preact":
        return list(layers.preact) or stages
    if kind == "last":
        return stages[-1:]
    if kind == "middle":
        return [stages[len(stages) // 2]] if stages else []
    if kind == "embedding":
        return [layers.embedding] if layers.embedding else stages[-1:]
    raise ValueError(f"unknown layer kind {kind!r}")


class KDMethod(nn.Module):
    """One distillation term; `weight` multiplies its loss. Subclasses implement `loss(batch)`.

    A subclass that reads features sets `layer_kind` (stages, preact, last, middle or embedding:
    which of the model config's `layers` it reads by default), may build adapters in `setup()` from
    the shapes of one dry forward pass, and may train parts of its own before the student in
    `prepare()`. It is an nn.Module so that its adapters train and save with the student.

    `stage1_epochs` > 0 trains the student on this term alone first (FitNets' hint stage, FSP's and
    AB's initialisation); `joint` says whether the term is also added during the main training.
    """

    layer_kind: Optional[str] = None
    pairs_layers = True  # student_layers[i] is compared with teacher_layers[i]
    needs_index = False  # True: the training loader must hand over each sample's index (Batch.index)

    def __init__(self, weight: float, student_layers: Optional[Sequence[str]] = None,
                 teacher_layers: Optional[Sequence[str]] = None, stage1_epochs: int = 0, joint: bool = True):
        super().__init__()
        self.weight = float(weight)
        self.student_layers = list(student_layers) if student_layers is not None else None
        self.teacher_layers = list(teacher_layers) if teacher_layers is not None else None
        self.stage1_epochs = int(stage1_epochs)
        self.joint = bool(joint)
        self.name = type(self).__name__.lower()  # set to the config's name by build_methods
        if self.layer_kind is None:  # reads logits only: nothing to choose or size
            self.student_layers, self.teacher_layers = [], []
        self.ready = self.layer_kind is None

    def resolve_layers(self, student_cfg, teacher_cfg) -> None:
        """Fills in default layers from the student's and teacher's model configs."""
        if self.layer_kind is None:
            self.student_layers, self.teacher_layers = [], []
            return
        for role, cfg in (("student", student_cfg), ("teacher", teacher_cfg)):
            if getattr(self, f"{role}_layers") is None:
                chosen = default_layers(self.layer_kind, cfg.layers)
                if not chosen:
                    raise KdrunError(
                        f"kd.{self.name}: {role}={cfg.name} names no default layers ({role}.layers); set "
                        f"kd.{self.name}.{role}_layers=[...] to module paths of the model"
                    )
                setattr(self, f"{role}_layers", chosen)
        if self.pairs_layers and len(self.student_layers) != len(self.teacher_layers):
            raise KdrunError(
                f"kd.{self.name} pairs student and teacher layers in order, but got {len(self.student_layers)} "
                f"student layer(s) {self.student_layers} and {len(self.teacher_layers)} teacher layer(s) "
                f"{self.teacher_layers}: set kd.{self.name}.student_layers and kd.{self.name}.teacher_layers to "
                "lists of the same length"
            )

    def setup(self, student_feats: List[torch.Tensor], teacher_feats: List[torch.Tensor]) -> None:
        """Builds adapters sized from one dry forward pass (default: none)."""

    def prepare(self, teacher: nn.Module, data, device: torch.device, seed: int) -> None:
        """Trains the method's own parts before the student (default: nothing to train)."""

    def loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def describe_adapter(self, index: int) -> str:
        """What maps student layer `index` before the loss (for the dry run's table)."""
        adapters = getattr(self, "adapters", None)
        return describe(adapters[index]) if adapters is not None else "-"


def describe(module: nn.Module) -> str:
    parts = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            parts.append(f"conv{m.kernel_size[0]}x{m.kernel_size[1]} {m.in_channels}->{m.out_channels}")
        elif isinstance(m, nn.Linear):
            parts.append(f"linear {m.in_features}->{m.out_features}")
        elif isinstance(m, nn.BatchNorm2d):
            parts.append("BN")
        elif isinstance(m, nn.ReLU):
            parts.append("ReLU")
    return " + ".join(parts) or type(module).__name__


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pools the larger of two feature maps to the other's size (a teacher and student
    stage seldom share a resolution when their strides differ)."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[2:] == b.shape[2:]:
        return a, b
    if a.shape[2] * a.shape[3] > b.shape[2] * b.shape[3]:
        return F.adaptive_avg_pool2d(a, b.shape[2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[2:])


class _Flat(nn.Module):
    """A linear map from a flattened feature to `shape`."""

    def __init__(self, in_features: int, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)
        self.linear = nn.Linear(in_features, math.prod(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).view(x.shape[0], *self.shape)


def adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """Maps a student feature (shape N, ...) to the teacher's channels: a 1x1 convolution + batch
    norm between feature maps (FitNets' regressor, AB's connector), a linear map when either is flat."""
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        return nn.Sequential(nn.Conv2d(student_shape[1], teacher_shape[1], 1, bias=False),
                             nn.BatchNorm2d(teacher_shape[1]))
    return _Flat(math.prod(student_shape[1:]), teacher_shape[1:])


def label_terms(model: nn.Module, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
                ce_weight: float = 1.0) -> Dict[str, torch.Tensor]:
    """A model's own loss terms on the labels of its last training forward, every trainer's (the
    Distiller's, mutual learning's peers', BYOT's student): {'loss_ce': ce_weight * its label loss,
    'loss_<name>': each of its regularisers}. The label loss is the model's own `label_loss(y,
    label_smoothing)` where it defines one (the soft decision tree's leaf-weighted cross-entropy),
    else the cross-entropy of `logits` with label smoothing; `regularizers()` (the tree's penalty)
    gives named terms of their own. With ce_weight 0 there is no 'loss_ce' at all: a zero-weighted
    term would still give the classifier zero gradients, and weight decay would then move it."""
    terms = {}
    if ce_weight:
        own = getattr(model, "label_loss", None)
        ce = own(y, label_smoothing) if own is not None else F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        terms["loss_ce"] = ce_weight * ce
    terms.update({f"loss_{k}": v for k, v in getattr(model, "regularizers", dict)().items()})
    return terms


class Distiller(MixedPrecision):
    """student (+ frozen teacher) -> {'loss', 'loss_ce', 'loss_<method>', ..., 'logits'}.

    Every loss_* value is that term's weighted contribution, so `loss` is their sum. With no KD term
    this trains a model from labels alone (the teacher, or the kd=none baseline). Methods that read
    features are set up with one dry forward pass on `example` (a batch of inputs).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module] = None,
        methods: Optional[Dict[str, KDMethod]] = None,
        ce_weight: float = 1.0,
        example: Optional[torch.Tensor] = None,
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        cuda_graphs: str = "off",
        label_smoothing: float = 0.0,
    ):
        super().__init__(amp_dtype, channels_last, cuda_graphs)
        methods = methods or {}
        if methods and teacher is None:
            raise ValueError("KD methods need a teacher")
        self.student = student
        self.methods = nn.ModuleDict(methods)
        self.ce_weight, self.label_smoothing = ce_weight, float(label_smoothing)
        # Not registered as a submodule: the teacher is not trained, not saved with the student,
        # and .train() cannot switch it out of eval mode.
        self._teacher = [freeze(teacher)] if teacher is not None and methods else []
        self._student_tap = FeatureTap(student, [p for m in methods.values() for p in m.student_layers], "student")
        self._teacher_tap = (FeatureTap(teacher, [p for m in methods.values() for p in m.teacher_layers], "teacher")
                             if self._teacher else None)
        self.layer_report: list[dict] = []
        if any(not m.ready for m in methods.values()):
            if example is None:
                raise ValueError("methods that read features need an example batch to size their adapters")
            self._dry_pass(example)

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._teacher[0] if self._teacher else None

    def to(self, *args, **kwargs):
        for t in self._teacher:
            t.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def _run(self, x: torch.Tensor, teacher_logits: Optional[torch.Tensor] = None):
        with self._student_tap:
            logits = logits_of(self.student(x))
        if self._teacher and (teacher_logits is None or self._teacher_tap.paths):
            with torch.no_grad(), self._teacher_tap:
                teacher_logits = logits_of(self.teacher(x))
        return logits, teacher_logits

    def _batch(self, method: KDMethod, y, logits, teacher_logits, index=None) -> Batch:
        return Batch(labels=y, student_logits=logits, teacher_logits=teacher_logits,
                     student_feats=[self._student_tap.outputs[p] for p in method.student_layers],
                     teacher_feats=[self._teacher_tap.outputs[p] for p in method.teacher_layers], index=index)

    def _dry_pass(self, x: torch.Tensor) -> None:
        """Sizes every method's adapters from real feature shapes and checks that its loss computes,
        so a wrong layer fails here with a clear message, not deep inside training."""
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            logits, teacher_logits = self._run(x)
            y = logits.argmax(1)
            for name, method in self.methods.items():
                batch = self._batch(method, y, logits, teacher_logits)
                if not method.ready:
                    try:
                        method.setup(batch.student_feats, batch.teacher_feats)
                    except ValueError as e:
                        raise KdrunError(f"kd.{name}: {e}") from None
                    method.to(x.device)
                    method.ready = True
                method.eval()
                try:
                    method.loss(batch)
                except ValueError as e:
                    raise KdrunError(f"kd.{name}: {e}") from None
                self.layer_report.extend(
                    {"method": name, "student": sp, "student_shape": tuple(sf.shape[1:]), "teacher": tp,
                     "teacher_shape": tuple(tf.shape[1:]), "adapter": method.describe_adapter(i)}
                    for i, (sp, sf, tp, tf) in enumerate(zip(method.student_layers, batch.student_feats,
                                                             method.teacher_layers, batch.teacher_feats)))
        self.student.train(was_training)

    def _forward(self, x, y, teacher_logits: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None):
        """`teacher_logits`, when given (cached for un-augmented inputs), replace running the teacher;
        `index` is each sample's position in the training split (for methods that need it, CRD's)."""
        logits, teacher_logits = self._run(x, teacher_logits)
        # ce_weight 0: a first stage on a KD term alone, with no CE term at all (see label_terms).
        losses = label_terms(self.student, logits, y, self.label_smoothing, self.ce_weight)
        for name, method in self.methods.items():
            losses[f"loss_{name}"] = method.weight * method.loss(self._batch(method, y, logits, teacher_logits, index))
        # a + b, not sum()'s 0 + a + b: one kernel fewer in every step (the same number).
        return {"loss": functools.reduce(operator.add, losses.values()), **losses, "logits": logits}

