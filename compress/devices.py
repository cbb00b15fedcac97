"""Device names, checked once: a misspelt or missing device is refused, never recorded as used."""

from __future__ import annotations

import re

from .errors import UserError

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device_name(device: str) -> str:
    """'cpu', 'cuda' or 'cuda:N'; anything else raises ValueError (for validators) naming what is accepted."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    return device


def check_device(device: str, option: str = "--device") -> str:
    """A device name that exists on this machine; one-line UserError otherwise."""
    try:
        check_device_name(device)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}") from None
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"{option} {device}: no CUDA GPU is available to PyTorch here; use {option} cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
