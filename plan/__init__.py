"""Capacity planning from plain inputs: parameters, per-rank memory, traffic and FLOPs of a training run
on a layout, and the per-rank memory of evaluating its model (replica or ZeRO-3).

Inputs are a model's shape (`seq2vae.model.shape`) and values (`RunSettings`); reading them from a
training config is `seq2vae.train.capacity`'s job, so nothing here imports train or evaluation."""

from .memory import (
    InferenceBatch,
    InferenceBytes,
    ModelStateBytes,
    ZeroSetting,
    activation_bytes,
    inference_bytes,
    model_state_bytes,
)
from .placement import PlacementError, PlacementEstimate, choose_placement, estimate_placement
from .planner import ClusterLayout, Plan, RunSettings, plan_run

__all__ = [
    "ClusterLayout",
    "InferenceBatch",
    "InferenceBytes",
    "ModelStateBytes",
    "Plan",
    "PlacementError",
    "PlacementEstimate",
    "RunSettings",
    "ZeroSetting",
    "activation_bytes",
    "choose_placement",
    "estimate_placement",
    "inference_bytes",
    "model_state_bytes",
    "plan_run",
]
