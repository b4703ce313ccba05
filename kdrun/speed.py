"""GPU speed options: mixed precision, channels_last memory layout and torch.compile.

`auto` turns the first two on where they pay off (bf16 autocast on a CUDA device that supports it,
channels_last for convolutional models on CUDA) and off elsewhere; compile is opt-in, as it costs
minutes of compilation before the first step. fp16 needs its loss scaled: `OptimizerStep` does that
(with a GradScaler) together with gradient clipping, which must see the unscaled gradients."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from kdrun import KdrunError


def amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `amp` = auto | off | bf16 | fp16 (fp16 only on CUDA)."""
    if setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        if device.type != "cuda":
            raise KdrunError(f"amp=fp16 needs a CUDA device (this run is on {device}); use amp=bf16 or amp=off")
        return torch.float16
    raise KdrunError(f"amp={setting}: choose auto, off, bf16 or fp16")


def use_channels_last(setting: str, device: torch.device, model: nn.Module) -> bool:
    if setting not in ("auto", "on", "off"):
        raise KdrunError(f"channels_last={setting}: choose auto, on or off")
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return has_conv and (setting == "on" or (setting == "auto" and device.type == "cuda"))


def accelerate(model: nn.Module, cfg, device: torch.device) -> nn.Module:
    """Applies channels_last and compile to a model, in place (its state_dict keys do not change)."""
    if use_channels_last(cfg.channels_last, device, model):
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()
    return model


class MixedPrecision(nn.Module):
    """Base of the trainers (Distiller, Mutual, SelfDistiller): `forward(x, y, ...)` feeds
    `_forward` channels-last images when the models were converted, under autocast when `amp_dtype`
    is set, and returns the losses in full precision. `cuda_graphs` (on, auto, off) tells the engine
    whether to replay the training step as a CUDA graph (kdrun.step)."""

    def __init__(self, amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
                 cuda_graphs: str = "off"):
        super().__init__()
        self.amp_dtype, self.channels_last, self.cuda_graphs = amp_dtype, channels_last, cuda_graphs

    def forward(self, x: torch.Tensor, y: torch.Tensor, **kwargs) -> dict:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            return self._forward(x, y, **kwargs)
        # No cast cache: a CUDA graph captures the casts themselves (and a step uses each weight once).
        with torch.autocast(x.device.type, dtype=self.amp_dtype, cache_enabled=False):
            out = self._forward(x, y, **kwargs)
        return {k: v.float() for k, v in out.items()}

    def _forward(self, x: torch.Tensor, y: torch.Tensor, **kwargs) -> dict:
        raise NotImplementedError


def cuda_graphs_setting(cfg, device: torch.device) -> str:
    """`cuda_graphs` after the checks that need no data: on and auto stay, unless CUDA graphs cannot
    apply to this run (then auto is off, and on is refused with the reason)."""
    from kdrun import distributed

    setting = cfg.cuda_graphs
    if setting not in ("auto", "on", "off"):
        raise KdrunError(f"cuda_graphs={setting}: choose auto, on or off")
    why_not = None
    if device.type != "cuda":
        why_not = f"CUDA graphs need a CUDA device (this run is on {device})"
    elif cfg.amp == "fp16":
        why_not = "amp=fp16 trains with a gradient scaler, whose step reads an overflow flag on the host"
    elif cfg.compile:
        why_not = "compile=true compiles the models instead (torch.compile has CUDA graphs of its own)"
    elif distributed.world_size() > 1:
        why_not = "several processes (DDP) reduce their gradients outside the captured step"
    if why_not is None or setting == "off":
        return setting
    if setting == "on":
        raise KdrunError(f"cuda_graphs=on: {why_not}; use cuda_graphs=auto or off")
    return "off"


def speed_settings(cfg, device: torch.device, model: nn.Module) -> dict:
    """The MixedPrecision arguments for a run's config."""
    return dict(amp_dtype=amp_dtype(cfg.amp, device), channels_last=use_channels_last(cfg.channels_last, device, model),
                cuda_graphs=cuda_graphs_setting(cfg, device))


def grad_scaler(amp_dtype: Optional[torch.dtype], device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A GradScaler under fp16, whose smallest normal number is 6e-5: unscaled, small gradients underflow
    to zero. bf16 has float32's range and needs none."""
    return torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None


class OptimizerStep:
    """One update from a loss: backward (of the scaled loss, with a scaler), the gradients' norm clipped
    to `grad_clip` (after unscaling them), then the optimizer's step, which the scaler skips, lowering
    its scale, when a gradient is inf or NaN. `lr_at(i)`, when set, gives the learning rate of the
    epoch's i-th step (a warmup), set before each step."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler] = None,
                 grad_clip: Optional[float] = None):
        self.optimizer, self.scaler, self.grad_clip = optimizer, scaler, grad_clip
        # What clipping sees, listed once (loading a state dict keeps the groups' parameters).
        self.params = [p for group in optimizer.param_groups for p in group["params"]] if grad_clip else []
        self.lr_at: Optional[Callable[[int], float]] = None
        self.step_in_epoch = 0

    def start_epoch(self, lr_at: Optional[Callable[[int], float]] = None) -> None:
        self.lr_at, self.step_in_epoch = lr_at, 0

    def __call__(self, loss: torch.Tensor) -> None:
        if self.lr_at is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step_in_epoch)
        self.step_in_epoch += 1
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.grad_clip:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
