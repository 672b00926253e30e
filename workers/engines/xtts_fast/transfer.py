"""Copies between host and device that never wait for the device.

A copy from pageable host memory synchronizes the CUDA stream (and with it the
decode step in flight); from pinned memory it is queued like a kernel. The
other way, a copy into a pinned buffer is started now and read once an event
recorded after it has passed.
"""

from __future__ import annotations

import torch


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` on ``device``, queued behind the work already there (pinned first on CUDA)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def long_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    """A long tensor of ``values`` on ``device`` (``torch.tensor(..., device=cuda)`` would synchronize)."""
    return to_device(torch.tensor(values, dtype=torch.long), device)


def start_to_host(src: torch.Tensor, pinned: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host copy of ``src`` that is complete once the stream reaches this point; into pinned memory
    (asynchronous) when ``pinned``, which only CUDA has."""
    host = torch.empty(src.shape, dtype=dtype or src.dtype, pin_memory=pinned)
    host.copy_(src, non_blocking=True)
    return host
