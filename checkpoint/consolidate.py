"""A DeepSpeed checkpoint (ZeRO-1/2/3, BF16_Optimizer, no ZeRO) -> one state dict, built parameter by
parameter, lean on host memory.

Computes what DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` (deepspeed/utils/zero_to_fp32.py,
0.19) returns, the same values bit for bit (tests/train/test_consolidate.py compares them on real
2-rank runs), without its memory cost: DeepSpeed reads every `*_model_states.pt` in full (ZeRO-1/2
store the module's own weights there, beside the optimizer's fp32 partitions) and concatenates each
param group's partitions into one vector before slicing it, peaking at twice the state it returns
(bench/RESULTS.md). Here

- every file is opened with `safe_load.load_weights_only` (mmap, weights-only): nothing in it runs,
  and no tensor data is read until a parameter needs it;
- each parameter is written once, straight into a tensor of the requested dtype, from the slices of
  the partitions that hold it, and the file pages read for it are handed back (`mapped_pages.py`).

so host memory peaks near the returned state, in the requested dtype, plus one parameter.

The layouts, as DeepSpeed writes them:

- ZeRO-1/2: `mp_rank_00_model_states.pt` holds `param_shapes` (per param group, an ordered name ->
  shape map), `buffer_names` (the buffers themselves are in `module`), `shared_params` (alias ->
  stored name) and, from ZeRO-2 on, `frozen_param_shapes`/`frozen_param_fragments`: the parameters
  the optimizer did not own when the checkpoint was written, whole. Rank r's
  `zero_pp_rank_r_mp_rank_00_optim_states.pt` holds `single_partition_of_fp32_groups`: group g's
  parameters flattened in `param_shapes` order, each followed by its `param_alignment_paddings`
  entry, the group padded to a multiple of 2 x world size and cut into one slice per rank.
- ZeRO-3: one `zero_pp_rank_r_mp_rank_00_model_states.pt` per rank, whose frozen fragments are rank
  r's share of each frozen parameter, and `fp32_flat_groups` per rank: every parameter is cut into
  world-size shares of ceil(numel / world size) (the last one padded), rank r holding share r of
  each, in `param_shapes` order across its groups.

- DeepSpeed's BF16_Optimizer (stage 1 with bf16 and fp32 gradient accumulation): rank r's
  `bf16_zero_pp_rank_r_mp_rank_00_optim_states.pt` holds `single_partition_of_fp32_groups` without a
  `zero_stage` entry (DeepSpeed's zero_to_fp32 refuses these files): group g's parameters flattened
  contiguously in `param_shapes` order (no per-parameter padding), the group padded at its end to a
  multiple of 2 x world size (`group_paddings`: the padding inside each rank's slice, all on the last
  rank) and cut into one slice per rank.
- No ZeRO (stage 0): `mp_rank_00_model_states.pt` alone, its `module` the whole fp32 state dict
  (parameters, tied aliases sharing one storage, persistent buffers) and `optimizer` the torch
  optimizer's own state; returned as stored, in the requested dtype, aliases as one tensor.

The state dict lists buffers, then frozen parameters, then the optimizer's parameters (one frozen
when the checkpoint was written is in both lists: the optimizer's fp32 copy is its value, as in
DeepSpeed), then the aliases of shared parameters, which are the same tensor as their source.
A file of another layout raises ValueError naming it; nothing falls back to DeepSpeed's loader.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from deepspeed.checkpoint.constants import (
    AUTOEP_LAYERS_KEY,
    AUTOEP_LAYERS_KEY_LEGACY,
    AUTOEP_ZERO3_EXPERT_STATE_FORMAT_KEY,
    AUTOEP_ZERO3_PARTITIONED_EXPERT_STATE_FORMAT,
    BUFFER_NAMES,
    FP32_FLAT_GROUPS,
    FROZEN_PARAM_FRAGMENTS,
    FROZEN_PARAM_SHAPES,
    GROUP_PADDINGS,
    OPTIMIZER_STATE_DICT,
    PARAM_ALIGNMENT_PADDINGS,
    PARAM_SHAPES,
    PARTITION_COUNT,
    SINGLE_PARTITION_OF_FP32_GROUPS,
    ZERO_STAGE,
)

from .mapped_pages import MappedPages
from .safe_load import load_weights_only


@dataclass
class ModelStates:
    """What one `*_model_states.pt` contributes (tensors still backed by the file's mapping)."""

    path: Path
    buffers: dict[str, torch.Tensor]
    param_shapes: list[dict[str, torch.Size]]
    shared_params: dict[str, str]
    frozen_param_shapes: dict[str, torch.Size]
    frozen_param_fragments: dict[str, torch.Tensor]


@dataclass
class OptimStates:
    """The fp32 master partitions of all ranks, and how they are laid out."""

    zero_stage: int
    world_size: int
    flat_groups: list[list[torch.Tensor]]  # [rank][param group]
    alignment_paddings: list[list[int]] | None  # [param group][parameter], ZeRO-1/2 only
    group_paddings: list[list[int]] | None = None  # [rank][param group]: BF16_Optimizer only


class Concatenation:
    """1-D tensors read as if concatenated, without concatenating them."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = [tensor.reshape(-1) for tensor in tensors]
        self.starts = [0]
        for tensor in self.tensors:
            self.starts.append(self.starts[-1] + tensor.numel())
        self.numel = self.starts[-1]

    def slices(self, start: int, length: int) -> list[torch.Tensor]:
        """Views of the tensors that together hold elements [start, start + length)."""
        end = start + length
        if start < 0 or end > self.numel:
            raise ValueError(f"elements [{start}, {end}) are beyond the {self.numel} stored")
        pieces = []
        index = bisect.bisect_right(self.starts, start) - 1
        while length and self.starts[index] < end:
            low, high = max(start, self.starts[index]), min(end, self.starts[index + 1])
            if low < high:
                pieces.append(self.tensors[index][low - self.starts[index] : high - self.starts[index]])
            index += 1
        return pieces


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)  # integers throughout: exact for any checkpoint size


def _natural_key(path: Path) -> list:
    """rank_2 before rank_10, as DeepSpeed sorts the files."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _files(checkpoint: Path, pattern: str) -> list[Path]:
    files = sorted(checkpoint.glob(pattern), key=_natural_key)
    if not files:
        raise FileNotFoundError(f"{checkpoint} has no {pattern} files: not a DeepSpeed ZeRO checkpoint")
    return files


def _refuse_expert_partitioned(path: Path, state: dict) -> None:
    """AutoEP ZeRO-3 partitions experts over replica groups, not over all ranks: zero_to_fp32 refuses it too."""
    layers = state.get(AUTOEP_LAYERS_KEY)
    if layers is None:
        layers = state.get(AUTOEP_LAYERS_KEY_LEGACY)
    if isinstance(layers, list) and any(
        isinstance(entry, dict)
        and entry.get(AUTOEP_ZERO3_EXPERT_STATE_FORMAT_KEY) == AUTOEP_ZERO3_PARTITIONED_EXPERT_STATE_FORMAT
        for entry in layers
    ):
        raise ValueError(f"{path}: expert-partitioned (AutoEP) ZeRO-3 checkpoints cannot be consolidated")


def _model_states(path: Path, state: Any) -> ModelStates:
    if not isinstance(state, dict) or BUFFER_NAMES not in state or not state.get(PARAM_SHAPES):
        raise ValueError(f"{path} is not a ZeRO model state file (no {BUFFER_NAMES!r} / {PARAM_SHAPES!r})")
    _refuse_expert_partitioned(path, state)
    buffer_names = set(state[BUFFER_NAMES])
    return ModelStates(
        path=path,
        buffers={name: tensor for name, tensor in state["module"].items() if name in buffer_names},
        param_shapes=state[PARAM_SHAPES],
        shared_params=dict(state["shared_params"] or {}),
        frozen_param_shapes=state.get(FROZEN_PARAM_SHAPES) or {},
        frozen_param_fragments=state.get(FROZEN_PARAM_FRAGMENTS) or {},
    )


def _is_bf16_optimizer(state: Any) -> bool:
    inner = state.get(OPTIMIZER_STATE_DICT) if isinstance(state, dict) else None
    return isinstance(inner, dict) and ZERO_STAGE not in inner and {SINGLE_PARTITION_OF_FP32_GROUPS, GROUP_PADDINGS} <= set(inner)


def _bf16_optim_states(paths: list[Path], states: list[Any]) -> OptimStates:
    for path, state in zip(paths, states, strict=True):
        if not _is_bf16_optimizer(state):
            raise ValueError(f"{path} is not a BF16_Optimizer state file like {paths[0].name}")
    counts = states[0][OPTIMIZER_STATE_DICT][PARTITION_COUNT]
    world_size = max(counts) if isinstance(counts, list) else int(counts)
    if world_size != len(paths):
        raise ValueError(f"{paths[0].parent}: written by {world_size} ranks but holds {len(paths)} *_optim_states.pt files")
    inner = [state[OPTIMIZER_STATE_DICT] for state in states]
    return OptimStates(1, world_size, [list(s[SINGLE_PARTITION_OF_FP32_GROUPS]) for s in inner], None,
                       [list(s[GROUP_PADDINGS]) for s in inner])


def _optim_states(paths: list[Path], states: list[Any]) -> OptimStates:
    if _is_bf16_optimizer(states[0]):
        return _bf16_optim_states(paths, states)
    for path, state in zip(paths, states, strict=True):
        if not isinstance(state, dict) or ZERO_STAGE not in state.get(OPTIMIZER_STATE_DICT, {}):
            raise ValueError(f"{path} is not a ZeRO optimizer state file (no {OPTIMIZER_STATE_DICT}.{ZERO_STAGE})")
    first = states[0][OPTIMIZER_STATE_DICT]
    zero_stage = int(first[ZERO_STAGE])
    # ZeRO-2 stores one partition count per param group (expert groups may have fewer ranks).
    counts = first[PARTITION_COUNT]
    world_size = max(counts) if isinstance(counts, list) else int(counts)
    if world_size != len(paths):
        raise ValueError(
            f"{paths[0].parent}: written by {world_size} ranks but holds {len(paths)} *_optim_states.pt files "
            "(overwritten by an older checkpoint, or a rank did not save its part)"
        )
    if zero_stage in (1, 2):
        key = SINGLE_PARTITION_OF_FP32_GROUPS
    elif zero_stage == 3:
        key = FP32_FLAT_GROUPS
    else:
        raise ValueError(f"{paths[0]}: unknown ZeRO stage {zero_stage}")
    flat_groups = []
    for path, state in zip(paths, states, strict=True):
        if key not in state[OPTIMIZER_STATE_DICT]:
            raise ValueError(f"{path}: a ZeRO-{zero_stage} optimizer state file without {key!r}")
        flat_groups.append(list(state[OPTIMIZER_STATE_DICT][key]))
    return OptimStates(zero_stage, world_size, flat_groups, first.get(PARAM_ALIGNMENT_PADDINGS))


class Writer:
    """Copies slices of mapped partitions into new tensors, handing the pages read back."""

    def __init__(self, dtype: torch.dtype, pages: MappedPages):
        self.dtype = dtype
        self.pages = pages

    def write(self, pieces: list[torch.Tensor], shape: torch.Size, stored: torch.dtype) -> torch.Tensor:
        """The first prod(shape) elements of the pieces (of dtype `stored`), shaped `shape`.

        In the writer's dtype if `stored` is floating point (the pieces are converted as they are copied,
        so no full-size copy in `stored` ever exists); integer and bool tensors keep their dtype.
        """
        numel = math.prod(shape)
        output = torch.empty(numel, dtype=self.dtype if stored.is_floating_point else stored)
        filled = 0
        for piece in pieces:
            take = min(piece.numel(), numel - filled)
            if take <= 0:
                break
            output[filled : filled + take].copy_(piece[:take])
            self.pages.release(piece[:take])
            filled += take
        if filled != numel:
            raise ValueError(f"a parameter of shape {tuple(shape)} needs {numel} elements, found {filled}")
        return output.view(shape)


def _zero12_parameters(model: ModelStates, optim: OptimStates, writer: Writer, state: dict) -> None:
    stored = optim.flat_groups[0][0].dtype
    for group, shapes in enumerate(model.param_shapes):
        flat = Concatenation([rank_groups[group] for rank_groups in optim.flat_groups])
        paddings = optim.alignment_paddings[group] if optim.alignment_paddings is not None else None
        if paddings is not None and len(paddings) != len(shapes):
            raise ValueError(f"{model.path}: {len(shapes)} parameters in param group {group}, {len(paddings)} paddings")
        offset = 0
        for index, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            state[name] = writer.write(flat.slices(offset, numel), shape, stored)
            offset += numel + (paddings[index] if paddings is not None else 0)
        if optim.group_paddings is not None:  # BF16_Optimizer records its end padding: the layout must match exactly
            padding = sum(rank_paddings[group] for rank_paddings in optim.group_paddings)
            if offset + padding != flat.numel:
                raise ValueError(f"{model.path}: param group {group} lays out {offset} elements and {padding} of "
                                 f"padding, the partitions hold {flat.numel}")
        # ZeRO-1/2: both the parameters' end and the stored length are rounded up to 2 x world size, as in
        # DeepSpeed: the partitions carry padding that only the live optimizer could predict exactly.
        elif _ceil_div(offset, 2 * optim.world_size) != _ceil_div(flat.numel, 2 * optim.world_size):
            raise ValueError(f"{model.path}: param group {group} lays out {offset} elements, the partitions hold {flat.numel}")


def _stage0_state(path: Path, state: Any, writer: Writer) -> dict[str, torch.Tensor]:
    """The module's own state dict of a checkpoint written without ZeRO, tied aliases as one tensor."""
    module = state.get("module") if isinstance(state, dict) else None
    if not isinstance(module, dict) or not module:
        raise ValueError(f"{path}: a stage-0 model state file without its module's state dict")
    written: dict[tuple, torch.Tensor] = {}
    result = {}
    for name, tensor in module.items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if where not in written:
            written[where] = writer.write([tensor.reshape(-1)], tensor.shape, tensor.dtype)
        result[name] = written[where]
    return result


def _is_stage0(state: Any) -> bool:
    """Written without ZeRO: no partitions (param_shapes None) and the torch optimizer's state beside the module."""
    if not isinstance(state, dict) or state.get(PARAM_SHAPES) is not None or not isinstance(state.get("optimizer"), dict):
        return False
    return int((state.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0)) == 0


def _zero3_parameters(model: ModelStates, optim: OptimStates, writer: Writer, state: dict) -> None:
    ranks = [Concatenation(groups) for groups in optim.flat_groups]
    if len({rank.numel for rank in ranks}) != 1:
        raise ValueError(f"{model.path.parent}: the ranks' fp32 partitions differ in size {[rank.numel for rank in ranks]}")
    stored = optim.flat_groups[0][0].dtype
    offset = 0
    for shapes in model.param_shapes:
        for name, shape in shapes.items():
            share = _ceil_div(math.prod(shape), optim.world_size)
            pieces = [piece for rank in ranks for piece in rank.slices(offset, share)]
            state[name] = writer.write(pieces, shape, stored)
            offset += share
    if offset != ranks[0].numel:
        raise ValueError(f"{model.path.parent}: the parameters take {offset} elements per rank, "
                         f"the partitions hold {ranks[0].numel}")


def _frozen_parameters(models: list[ModelStates], optim: OptimStates, writer: Writer, state: dict) -> None:
    frozen = models[0].frozen_param_shapes
    if frozen and optim.zero_stage == 3 and len(models) != optim.world_size:
        raise ValueError(f"{models[0].path.parent}: {len(models)} model state files for {optim.world_size} ranks")
    trained = {name for shapes in models[0].param_shapes for name in shapes}
    for name, shape in frozen.items():
        if name in trained:  # the optimizer's fp32 copy replaces it below: only its place in the order counts
            state[name] = None
        elif optim.zero_stage == 3:  # each rank's padded share
            fragments = [model.frozen_param_fragments[name] for model in models]
            state[name] = writer.write([fragment.reshape(-1) for fragment in fragments], shape, fragments[0].dtype)
        else:  # whole
            fragment = models[0].frozen_param_fragments[name]
            state[name] = writer.write([fragment.reshape(-1)], fragment.shape, fragment.dtype)


def consolidate(checkpoint: str | Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The full state dict of a DeepSpeed ZeRO checkpoint directory (e.g. run/checkpoints/step_00001000).

    Args:
        checkpoint: one checkpoint's directory, holding the `*_model_states.pt` and `*_optim_states.pt` files.
        dtype: the dtype of every floating-point tensor returned (integer buffers keep theirs).
    Returns:
        name -> CPU tensor, in DeepSpeed's order; shared parameters' aliases are the same tensor object.
    Raises:
        FileNotFoundError if files are missing; ValueError (UnsafeCheckpointError included) naming a file
        that holds anything else than tensors and DeepSpeed's types, or that is not laid out as above.
    """
    checkpoint = Path(checkpoint)
    pages = MappedPages()
    loaded = []  # kept until the end: the mappings (and so the tracked page ranges) stay in place

    def load(path: Path) -> Any:
        loaded.append(load_weights_only(path))
        pages.track(path)
        return loaded[-1]

    model_files = _files(checkpoint, "*_model_states.pt")
    writer = Writer(dtype, pages)
    first = load(model_files[0])
    if len(model_files) == 1 and not list(checkpoint.glob("*_optim_states.pt")) and _is_stage0(first):
        return _stage0_state(model_files[0], first, writer)
    states = [first, *(load(path) for path in model_files[1:])]
    models = [_model_states(path, model_state) for path, model_state in zip(model_files, states, strict=True)]
    optim_files = _files(checkpoint, "*_optim_states.pt")
    optim = _optim_states(optim_files, [load(path) for path in optim_files])

    state: dict[str, Any] = {
        name: writer.write([buffer.reshape(-1)], buffer.shape, buffer.dtype) for name, buffer in models[0].buffers.items()
    }
    _frozen_parameters(models, optim, writer, state)
    # BF16_Optimizer's partitions are laid out as ZeRO-1/2's, without per-parameter alignment padding.
    (_zero3_parameters if optim.zero_stage == 3 else _zero12_parameters)(models[0], optim, writer, state)
    for alias, stored in models[0].shared_params.items():
        if stored in state:
            state[alias] = state[stored]
    return state
