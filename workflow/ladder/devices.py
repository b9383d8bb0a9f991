"""Which accelerator a job uses."""

from __future__ import annotations

import os
from pathlib import Path


def cuda_present() -> bool:
    """Whether this host shows an NVIDIA GPU to its jobs, without importing torch (slow to load)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(Path("/proc/driver/nvidia/gpus").glob("*")) or Path("/dev/nvidia0").exists()


def resolve(device: str) -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; anything else is checked and kept."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA was asked for but torch sees no GPU")
    torch.device(device)  # raises on a malformed name
    return device
