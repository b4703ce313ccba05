"""timm's models (`pip install 'kdrun[timm]'`): `teacher=timm teacher.name=convnext_tiny`, with
timm's own adaptation to the input channels (in_chans) and classes (a new head when the published
weights have other classes). `pretrained` is true (timm's default weights) or a tag (`fb_in22k`)."""
from __future__ import annotations

from typing import Optional

from torch import nn

from kdrun import KdrunError


def _timm(name: str):
    try:
        import timm
    except ImportError:
        raise KdrunError(f"model {name}: library=timm needs timm: pip install 'kdrun[timm]' (or pip install timm)") \
            from None
    return timm


def full_name(name: str, pretrained) -> Optional[str]:
    """`name.tag` of the weights `pretrained` names (None: no weights), without downloading anything."""
    if pretrained is False or pretrained is None:
        return None
    timm = _timm(name)
    wanted = name if pretrained is True or str(pretrained).upper() == "TRUE" else f"{name}.{pretrained}"
    cfg = timm.models.get_pretrained_cfg(wanted)
    if cfg is None:
        tags = timm.list_pretrained(f"{name}.*")
        raise KdrunError(f"model {name} (pretrained={pretrained}): timm has no such weights"
                         + (f"; it has {', '.join(tags[:8])}" if tags else "; set pretrained=false"))
    return f"{name.partition('.')[0]}.{cfg.tag}" if cfg.tag else name


def build_timm(name: str, num_classes: int, in_channels: int, pretrained=False, **kwargs) -> nn.Module:
    timm = _timm(name)
    weights = full_name(name, pretrained)
    try:
        model = timm.create_model(weights or name, pretrained=weights is not None, num_classes=num_classes,
                                  in_chans=in_channels, **kwargs)
    except (RuntimeError, OSError, ValueError) as e:  # an unknown name; weights not in the cache and no network
        detail = " ".join(str(e).split())[:240]
        where = " (timm downloads weights from the Hugging Face Hub into $HF_HOME/hub; offline, copy them there)" \
            if weights else ""
        raise KdrunError(f"model {name} (library=timm, pretrained={pretrained}): {detail}{where}") from None
    if weights:
        model._kdrun_pretrained = {"weights": f"timm {weights}", "num_classes": timm.models.get_pretrained_cfg(
            weights).num_classes, "file": None}
    return model
