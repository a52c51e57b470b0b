"""Capacity planning: parameters, per-rank memory, traffic and FLOPs of a training config on a layout,
and the per-rank memory of evaluating its model (replica or ZeRO-3)."""

from .devices import DEVICE_PEAKS, lookup_device, peak_tflops
from .flops import forward_flops_per_sentence, training_flops_per_token
from .memory import (
    InferenceBatch,
    InferenceBytes,
    ModelStateBytes,
    ZeroSetting,
    activation_bytes,
    inference_bytes,
    model_state_bytes,
)
from .model_shape import ModelShape, model_shape
from .planner import ClusterLayout, Plan, plan_run

__all__ = [
    "ClusterLayout",
    "DEVICE_PEAKS",
    "InferenceBatch",
    "InferenceBytes",
    "ModelShape",
    "ModelStateBytes",
    "Plan",
    "ZeroSetting",
    "activation_bytes",
    "forward_flops_per_sentence",
    "inference_bytes",
    "lookup_device",
    "model_shape",
    "model_state_bytes",
    "peak_tflops",
    "plan_run",
    "training_flops_per_token",
]
