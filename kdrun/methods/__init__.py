"""KD methods: one file per method, named like its config (configs/kd/<name>.yaml)."""
from __future__ import annotations

from typing import Dict

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from kdrun import KdrunError


def build_methods(kd_cfg) -> Dict[str, "KDMethod"]:  # noqa: F821
    """Instantiates every method under `kd` (one entry per selected configs/kd/<name>.yaml)."""
    methods = {}
    for name, node in kd_cfg.items():
        try:
            methods[name] = instantiate(node)
        except InstantiationException as e:
            cause = e.__cause__
            if isinstance(cause, KdrunError):
                raise cause from None
            raise KdrunError(f"kd.{name}: {' '.join(str(cause or e).split())}") from None
    return methods
