"""Which batch each rank runs in each evaluation round.

Evaluation splits whole batches across ranks (batch b goes to rank b % world_size), so every batch
holds the same sentences, padded the same way, whatever the number of ranks: per-sentence results
are identical for 1 or many ranks. Every rank runs the same number of rounds (a rank without a real
batch in the last round runs a dummy one and drops its results), because under ZeRO-3 a rank that
skips a forward deadlocks the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Round:
    index: int
    batch: int | None  # the global batch index this rank runs, None for a dummy round
    first_sentence: int  # global index of the round's first sentence over all ranks (for per-round decisions)


def plan_rounds(num_sentences: int, batch_size: int, rank: int, world_size: int) -> Iterator[Round]:
    """The rounds one rank runs: batch b covers sentences [b*B, (b+1)*B) and runs on rank b % world_size."""
    num_batches = math.ceil(num_sentences / batch_size)
    for index in range(math.ceil(num_batches / world_size)):
        batch = index * world_size + rank
        yield Round(index, batch if batch < num_batches else None, index * world_size * batch_size)
