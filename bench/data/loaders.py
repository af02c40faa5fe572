"""What the training loop asks of a loader, so that it never needs to know which one it has."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TrainLoader(Protocol):
    """Training batches as a pure function of the position (epoch, step): InMemoryLoader, ShardLoader."""

    def __len__(self) -> int:
        """Batches per epoch (on this rank: every rank runs the same number)."""
        ...

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) of epoch `epoch` from step `start_step` on; a resumed epoch continues exactly."""
        ...

    def layout(self) -> dict[str, int]:
        """What the data order depends on beyond (seed, epoch, step); a resume must find the same."""
        ...

    def padded(self) -> int:
        """Samples repeated per epoch so that every DDP rank runs the same number of batches."""
        ...

    def pop_skipped(self) -> tuple[int, list[str]]:
        """Unreadable samples dropped since the last call (data.on_error=skip) and up to 10 of their names;
        resets the count."""
        ...

    def may_drop(self) -> bool:
        """Whether a batch can lose samples (shards with data.on_error=skip), so that a DDP rank's part of a step
        may be empty; otherwise every rank has a sample at every step."""
        ...
