"""Ranks agree on a user error before anyone leaves, so the job ends with one message, not a hang.

A problem one rank alone meets mid-run (its corrupt shard, a run directory only rank 0 locks) would
otherwise leave the other ranks blocked in their next collective until the timeout, then dying with
a communication traceback. Every rank calls `agree_on_user_error` at the same point; if any rank has
an error, all raise: that rank its own error, the others `PeerUserError` with the first message, which
only global rank 0 prints (seq2vae.errors).
"""

from __future__ import annotations

import torch

from ..distributed import any_rank, gather_objects
from ..errors import PeerUserError, UserError


def agree_on_user_error(error: UserError | None, device: torch.device) -> None:
    """A collective: returns when no rank has an error, raises on every rank when some rank has."""
    if not any_rank(error is not None, device):
        return
    # Rare path: the message itself travels to every rank, so rank 0 can print what rank 1 found.
    messages = [message for message in gather_objects(None if error is None else str(error)) if message]
    if error is not None and str(error) == messages[0]:
        raise error
    raise PeerUserError(messages[0])
