"""Reading DeepSpeed checkpoint files without running code from them.

DeepSpeed's checkpoint engine and `zero_to_fp32` call `torch.load(..., weights_only=False)`: a
pickle planted in a run directory's checkpoint runs when it is loaded. Export and evaluation, which
read run directories that may come from someone else, load them only inside `weights_only_loading`:

- every `*.pt` file of the checkpoint is first opened with `torch.load(weights_only=True, mmap=True)`
  (mmap: tensor data is not read, so this costs little even for an 11B checkpoint), and a file
  holding anything else than tensors, containers and the allow-listed types below is refused by name;
- then `TORCH_FORCE_WEIGHTS_ONLY_LOAD=1` makes torch treat DeepSpeed's own `weights_only=False`
  calls as `weights_only=True` while the same allow-list is active, so nothing can be swapped in
  between the check and the load.

The allow-list is what DeepSpeed 0.19 and our trainer store (read from real ZeRO-1/2/3 checkpoints):
numpy arrays and dtypes (the RNG states in `client_state`), DeepSpeed's loss scaler, ZeRO stage enum
and tensor-fragment addresses. Each is rebuilt from plain data by its class, never by calling an
arbitrary function.

Resuming a run (`load_checkpoint` in the trainer) does not go through here: it trusts the run
directory, as README.md states.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


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


def check_checkpoint_files(checkpoint_dir: str | Path) -> None:
    """Opens every `*.pt` file under `checkpoint_dir` weights-only; raises UnsafeCheckpointError naming the first bad one."""
    files = sorted(Path(checkpoint_dir).glob("*.pt"))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir} holds no checkpoint files (*.pt)")
    with torch.serialization.safe_globals(checkpoint_globals()):
        for path in files:
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except pickle.UnpicklingError as error:
                reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                raise UnsafeCheckpointError(
                    f"refusing to load {path}: it holds objects other than tensors and DeepSpeed's checkpoint "
                    f"types, and unpickling them could run code ({reason})"
                ) from None
            except RuntimeError as error:  # not a torch zip file at all (e.g. a raw pickle stream)
                raise UnsafeCheckpointError(f"refusing to load {path}: not a torch checkpoint file ({error})") from None


@contextlib.contextmanager
def weights_only_loading(checkpoint_dir: str | Path) -> Iterator[None]:
    """Checks `checkpoint_dir`'s files, then forces every `torch.load` inside to be weights-only."""
    check_checkpoint_files(checkpoint_dir)
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(checkpoint_globals()):
            yield
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(f"refusing to load a file of {checkpoint_dir}: {error}") from None
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous
