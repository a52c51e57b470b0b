"""Reading DeepSpeed checkpoint files without running code from them.

DeepSpeed's checkpoint engine and its `zero_to_fp32` call `torch.load(..., weights_only=False)`: a
pickle planted in a run directory's checkpoint runs when it is loaded. Export, evaluation and
`model.init_from`, which read run directories that may come from someone else, never go through
them: they open every checkpoint file with `load_weights_only` (`consolidate.py` builds the weights
from the files opened this way).

`load_weights_only` is `torch.load(weights_only=True, mmap=True)` with an allow-list: a file holding
anything else than tensors, containers and the allow-listed types below is refused by name. mmap:
tensor data is not read until used, so opening a file costs little even for an 11B checkpoint.

The allow-list is what DeepSpeed 0.19 and our trainer store (read from real ZeRO-1/2/3 checkpoints):
numpy arrays and dtypes (the RNG states in `client_state`), DeepSpeed's loss scaler, ZeRO stage enum
and tensor-fragment addresses. Each is rebuilt from plain data by its class, never by calling an
arbitrary function.

Resuming a run (`load_checkpoint` in the trainer) does not go through here: it trusts the run
directory, as docs/CHECKPOINTS.md ("What loading trusts") states.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds objects whose unpickling could run code."""


def checkpoint_globals() -> list:
    """The non-tensor types DeepSpeed checkpoints hold, allowed while unpickling them."""
    import numpy
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    numpy_dtypes = [
        value for value in vars(numpy.dtypes).values() if isinstance(value, type) and issubclass(value, numpy.dtype)
    ]
    return [
        numpy._core.multiarray._reconstruct,
        numpy.ndarray,
        numpy.dtype,
        *numpy_dtypes,
        LossScaler,
        ZeroStageEnum,
        fragment_address,
    ]


def load_weights_only(path: str | Path) -> Any:
    """`torch.load`s one checkpoint file memory-mapped, tensors and allow-listed types only.

    Tensors come back backed by the file's mapping (on CPU), their data read only when touched.
    Raises UnsafeCheckpointError naming `path` if the file holds anything else or is no torch zip file.
    """
    try:
        with torch.serialization.safe_globals(checkpoint_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and DeepSpeed's checkpoint "
            f"types, and unpickling them could run code ({reason})"
        ) from None
    except RuntimeError as error:  # not a torch zip file at all (e.g. a raw pickle stream)
        raise UnsafeCheckpointError(f"refusing to load {path}: not a torch checkpoint file ({error})") from None
