"""SLURM launch: sbatch templates and the renderer behind `seq2vae slurm render|submit`.

`render_job(kind, config, overrides, JobOptions(...))` returns the script; `seq2vae.slurm.cli`
wraps it for the command line. Templates: `templates/{train,sweep,eval}.sbatch` plus the shared
`templates/_launch.sbatch` (rendezvous, preemption forwarding, requeue).
"""

from .options import JobOptions, Layout, resolve_layout
from .render import RenderedJob, render_job
from .sweep import read_sweep_table

__all__ = ["JobOptions", "Layout", "RenderedJob", "read_sweep_table", "render_job", "resolve_layout"]
