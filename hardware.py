"""Peak dense throughput of common accelerators, the denominator of MFU.

Figures are the vendors' dense (no structured sparsity) tensor-core peaks in TFLOP/s, per GPU:
`bf16` for bf16 training, `tf32` for fp32 training (PyTorch runs fp32 matmuls on TF32 tensor cores
only when allowed; without them the fp32 peak is lower, so fp32 MFU against TF32 is conservative).
V100 has no bf16: its fp16 tensor-core peak is listed. Names are matched against
`torch.cuda.get_device_name()` (e.g. "NVIDIA H100 80GB HBM3"), most specific first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePeak:
    name: str
    bf16_tflops: float
    tf32_tflops: float
    memory_gib: float


# Most specific first: "H100 PCIe" must win over "H100", "A100-PCIE-40GB" etc. share "A100".
DEVICE_PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("B200", 2250.0, 1125.0, 180.0),
    DevicePeak("H200", 989.4, 494.7, 141.0),
    DevicePeak("H100 PCIe", 756.0, 378.0, 80.0),
    DevicePeak("H100 NVL", 835.0, 417.5, 94.0),
    DevicePeak("H100", 989.4, 494.7, 80.0),  # SXM
    DevicePeak("GH200", 989.4, 494.7, 96.0),
    DevicePeak("A100", 312.0, 156.0, 80.0),
    DevicePeak("L40S", 362.1, 183.0, 48.0),
    DevicePeak("L40", 181.0, 90.5, 48.0),
    DevicePeak("L4", 121.0, 60.0, 24.0),
    DevicePeak("A40", 149.7, 74.8, 48.0),
    DevicePeak("A10G", 70.0, 35.0, 24.0),
    DevicePeak("A10", 125.0, 62.5, 24.0),
    DevicePeak("RTX 6000 Ada", 364.2, 182.1, 48.0),
    DevicePeak("A6000", 154.8, 77.4, 48.0),
    DevicePeak("V100", 125.0, 15.7, 32.0),  # fp16 tensor cores; no bf16 on Volta
)


def lookup_device(device_name: str) -> DevicePeak | None:
    """The table entry whose name occurs in `device_name` (case-insensitive), or None."""
    lowered = device_name.lower()
    for peak in DEVICE_PEAKS:
        if peak.name.lower() in lowered:
            return peak
    return None


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Peak dense TFLOP/s of one `device_name` GPU for `precision` ("bf16" or "fp32"), or None if unknown."""
    peak = lookup_device(device_name)
    if peak is None:
        return None
    return peak.bf16_tflops if precision == "bf16" else peak.tf32_tflops


def known_device_names() -> list[str]:
    return [peak.name for peak in DEVICE_PEAKS]
