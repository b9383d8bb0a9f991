"""Prepared splits as batches on the training device.

uint8 images on the GPU are cheaper to move and augment than preprocessed floats: a whole Tiny
ImageNet train split is 1 GB as uint8, so it goes to the GPU once and every batch is a gather
there. When it does not fit, it stays in pinned host memory and batches stream asynchronously.

The arrays are memory-mapped, never read whole into the process: on the CPU every batch is a
gather from the mapped file (the page cache holds it, shared with other jobs reading the same
data), and the GPU and pinned copies are made straight from the mapping, without a private
copy in between (benchmarks/memory.py measures it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

# Keep the data below this share of the free GPU memory; the rest is for the model.
DEVICE_SHARE = 0.4


class DeviceSplit:
    """One split's images (uint8 NHWC) and labels, on `device` or pinned for streaming to it."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, device: torch.device, on_device: bool | None = None
    ):
        if len(x) != len(y):
            raise ValueError(f"images and labels differ in length: {len(x)} vs {len(y)}")
        self.device = torch.device(device)
        if on_device is None:
            on_device = (
                self.device.type != "cuda"
                or x.nbytes < DEVICE_SHARE * torch.cuda.mem_get_info(self.device)[0]
            )
        home = self.device if on_device else torch.device("cpu")
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(home)
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(home)
        if not on_device:
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
            log.info("%.2f GB of images streamed from pinned memory", x.nbytes / 1e9)
        self.on_device = on_device

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def load(
        cls, data: str | Path, split: str, device, on_device: bool | None = None
    ) -> DeviceSplit:
        data = Path(data)
        # "c": copy-on-write, so torch gets a writable array (it warns on read-only ones) that
        # nothing ever writes to.
        x = np.load(data / f"{split}_x.npy", mmap_mode="c")
        return cls(x, np.load(data / f"{split}_y.npy"), device, on_device)

    def batches(
        self,
        batch_size: int,
        order: torch.Tensor | None = None,
        drop_last: bool = False,
        first: int = 0,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 NCHW images, int64 labels) on the device, in `order` (default: as stored),
        from batch number `first` (a resumed epoch). NCHW is a view of NHWC storage: what the
        GPU gets is channels_last already."""
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        if order is not None:
            order = order.to(self.x.device)  # once per pass, not one small copy per batch
        for start in range(first * batch_size, stop, batch_size):
            if order is None:
                xb, yb = self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                xb, yb = self.x[idx], self.y[idx]
            if not self.on_device:
                xb = xb.pin_memory().to(self.device, non_blocking=True)
                yb = yb.pin_memory().to(self.device, non_blocking=True)
            yield xb.permute(0, 3, 1, 2), yb

    def steps(self, batch_size: int, drop_last: bool) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)
