"""Environment variables every job exports before its setup lines (which may override them).

- Offline Hugging Face: the renderer has already resolved the backbone and tokenizer to local
  snapshots (`seq2vae.slurm.snapshot`), so compute nodes never contact the hub: hundreds of ranks
  asking the hub at once get rate-limited, and many clusters' compute nodes have no internet at all.
- NCCL failure diagnosis on GPU jobs: a collective that times out aborts the process instead of
  hanging (async error handling), and each rank first dumps its flight recorder (the last
  collectives it issued, with sequence numbers) next to its log, which shows the rank that fell behind.
"""

from __future__ import annotations

from .options import Layout

OFFLINE_LINES = (
    "export HF_HUB_OFFLINE=1  # backbone and tokenizer are local snapshots, resolved when rendering",
    "export TRANSFORMERS_OFFLINE=1",
)

# Flight recorder: ring buffer of the last N collectives per rank, dumped on a timeout. The dump file
# prefix gets the rank appended; older torch releases read the second name. Not checked here (our
# machines have no NCCL): names from the PyTorch flight-recorder documentation.
NCCL_LINES = (
    "# NCCL: abort a rank whose collective timed out (3: without the teardown that can itself hang),",
    "# after dumping its flight recorder (the last collectives it issued) next to its log.",
    "export TORCH_NCCL_ASYNC_ERROR_HANDLING=3",
    "export TORCH_NCCL_TRACE_BUFFER_SIZE=2000",
    "export TORCH_NCCL_DUMP_ON_TIMEOUT=1",
    'export TORCH_FR_DUMP_TEMP_FILE="$JOB_LOG_DIR/nccl-trace-rank-"',
    'export TORCH_NCCL_DEBUG_INFO_TEMP_FILE="$TORCH_FR_DUMP_TEMP_FILE"',
)


def job_environment_lines(layout: Layout) -> list[str]:
    """Shell lines for the launch fragment: offline hub access always, NCCL diagnostics on GPU jobs."""
    lines = list(OFFLINE_LINES)
    if layout.gpus_per_node > 0:
        lines += NCCL_LINES
    return lines
