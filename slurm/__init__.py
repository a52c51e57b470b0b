"""SLURM launch: sbatch templates and the renderer behind `seq2vae slurm render|submit`.

`render_job(kind, config, overrides, JobOptions(...))` returns the script (`render_sweep`: a sweep's
arrays, one per wave of rows that start from earlier rows' weights, `waves.py`); `seq2vae.slurm.cli`
wraps them for the command line. Templates: `templates/{train,sweep,eval}.sbatch` plus the shared
`templates/_launch.sbatch` (per-node resources and environment, rendezvous, per-rank logs, preemption
forwarding, requeue after preemption or failure). `snapshot` turns hub names into local snapshots so
that jobs run offline.
"""

from .options import JobOptions, Layout, Resources, resolve_layout, resolve_resources
from .render import RenderedJob, render_job, render_sweep
from .sweep import read_sweep_table
from .waves import SweepWave

__all__ = ["JobOptions", "Layout", "RenderedJob", "Resources", "SweepWave", "read_sweep_table", "render_job", "render_sweep",
           "resolve_layout", "resolve_resources"]
