"""KD methods: one file per method, named like its config (configs/kd/<name>.yaml)."""
from __future__ import annotations

from typing import Dict

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from kdrun import KdrunError


def build_methods(kd_cfg, student_cfg, teacher_cfg) -> Dict[str, "KDMethod"]:  # noqa: F821
    """Instantiates every method under `kd` (one entry per selected configs/kd/<name>.yaml) and
    resolves the layers each reads from the student's and teacher's model configs."""
    methods = {}
    for name, node in kd_cfg.items():
        try:
            method = instantiate(node)
        except InstantiationException as e:
            cause = e.__cause__
            if isinstance(cause, KdrunError):
                raise cause from None
            raise KdrunError(f"kd.{name}: {' '.join(str(cause or e).split())}") from None
        method.name = name
        if not method.joint and method.stage1_epochs == 0:
            raise KdrunError(f"kd.{name}.joint=false with stage1_epochs=0 adds nothing: set kd.{name}.joint=true "
                             f"or give the term a first stage (kd.{name}.stage1_epochs=N)")
        method.resolve_layers(student_cfg, teacher_cfg)
        methods[name] = method
    return methods
