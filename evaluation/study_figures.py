"""The figures of a study report (matplotlib, Agg backend, fixed pixel sizes so pages lay out alike).

Each function draws one PNG from `StudyRun`s and returns its path, or None when no run has the data
it needs (a run without curves, an eval JSON without latents, ...).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on cluster nodes or in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .study_runs import StudyRun  # noqa: E402

DPI = 100
# (width, height) in inches; at DPI 100 the PNGs are 1000 x 320 and 1000 x 400 pixels, 500 x 400 for PCA.
WIDE_PANEL_ROW = (10.0, 3.2)
WIDE_FIGURE = (10.0, 4.0)
PCA_FIGURE = (5.0, 4.0)

# Training scalars drawn as curves: (metrics.jsonl key, axis title).
CURVES = (("train/recon", "reconstruction (nats/sentence)"), ("train/kl", "KL (nats/sentence)"), ("train/beta", "beta"))
# Metrics drawn against the varied setting: (metric key, axis title).
SETTING_METRICS = (("mi_dataset", "MI, q(z) over the set (nats)"), ("active_units", "active units"),
                   ("iw_nll", "IW-NLL (nats/sentence)"))
# A metadata field colours the PCA when it has this many distinct values at most.
MAX_COLOUR_CLASSES = 12


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)  # no bbox_inches="tight": it would change the pixel size
    plt.close(figure)
    return path


def training_curves(runs: list[StudyRun], path: Path) -> Path | None:
    """Reconstruction, KL and beta against the step, one line per run."""
    drawn = [run for run in runs if run.curves]
    if not drawn:
        return None
    figure, axes = plt.subplots(1, len(CURVES), figsize=WIDE_PANEL_ROW, dpi=DPI, constrained_layout=True)
    for axis, (key, title) in zip(axes, CURVES):
        for run in drawn:
            points = [(record["step"], record[key]) for record in run.curves if key in record]
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, label=run.name, linewidth=1)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    if len(drawn) <= 12:  # more names would cover the curves
        axes[-1].legend(fontsize=6, loc="best")
    return _save(figure, path)


def kl_per_dimension(runs: list[StudyRun], path: Path) -> Path | None:
    """Heat map: one row per run, its latent dimensions' mean KL sorted from largest to smallest."""
    rows = [(run.name, run.metrics.get("kl_per_dim")) for run in runs]
    rows = [(name, sorted(values, reverse=True)) for name, values in rows if values]
    if not rows:
        return None
    width = max(len(values) for _, values in rows)
    grid = np.full((len(rows), width), np.nan)
    for index, (_, values) in enumerate(rows):
        grid[index, : len(values)] = values
    figure, axis = plt.subplots(figsize=WIDE_FIGURE, dpi=DPI, constrained_layout=True)
    image = axis.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    axis.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
    axis.set_xlabel("latent dimension, sorted by KL (largest first)", fontsize=8)
    axis.set_title("mean KL per latent dimension (nats)", fontsize=9)
    axis.tick_params(labelsize=7)
    figure.colorbar(image, ax=axis)
    return _save(figure, path)


def metrics_by_setting(runs: list[StudyRun], labels: list[str], path: Path) -> Path | None:
    """MI, active units and IW-NLL per run, each bar labelled with the run's varied settings."""
    if not any(run.metrics.get(key) is not None for run in runs for key, _ in SETTING_METRICS):
        return None
    figure, axes = plt.subplots(1, len(SETTING_METRICS), figsize=WIDE_FIGURE, dpi=DPI, constrained_layout=True)
    positions = np.arange(len(runs))
    for axis, (key, title) in zip(axes, SETTING_METRICS):
        values = [run.metrics.get(key) for run in runs]
        axis.bar(positions, [np.nan if value is None else value for value in values], color="tab:blue")
        axis.set_xticks(positions, labels, rotation=60, ha="right", fontsize=6)
        axis.set_title(title, fontsize=9)
        axis.tick_params(axis="y", labelsize=7)
    return _save(figure, path)


def _colour_factor(metadata: list[dict | None]) -> tuple[str, list[str]] | None:
    """The metadata field to colour by: 'topic' when present, else the first with 2..12 values."""
    if not metadata or any(not isinstance(meta, dict) for meta in metadata):
        return None
    candidates = [key for key in metadata[0] if all(key in meta for meta in metadata)]
    candidates.sort(key=lambda key: key != "topic")
    for key in candidates:
        values = [str(meta[key]) for meta in metadata]
        if 2 <= len(set(values)) <= MAX_COLOUR_CLASSES:
            return key, values
    return None


def latent_pca(run: StudyRun, path: Path) -> Path | None:
    """The first two principal components of the run's saved posterior means, coloured by a known factor."""
    latents = (run.result or {}).get("latents")
    if not latents or len(latents.get("mu", [])) < 3:
        return None
    mu = np.asarray(latents["mu"], dtype=np.float64)  # [N,Z]
    centred = mu - mu.mean(0)
    # Principal axes from the SVD of the centred means; a collapsed posterior has (near) zero spread.
    _, singular_values, axes_t = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ axes_t[:2].T if axes_t.shape[0] >= 2 else np.pad(centred @ axes_t[:1].T, ((0, 0), (0, 1)))
    explained = singular_values**2 / max(float((singular_values**2).sum()), 1e-30)
    figure, axis = plt.subplots(figsize=PCA_FIGURE, dpi=DPI, constrained_layout=True)
    factor = _colour_factor(latents.get("meta") or [])
    if factor is None:
        axis.scatter(projected[:, 0], projected[:, 1], s=4, alpha=0.6)
        axis.set_title(f"{run.name}: PCA of mu", fontsize=9)
    else:
        name, values = factor
        for value in sorted(set(values)):
            chosen = np.array([v == value for v in values])
            axis.scatter(projected[chosen, 0], projected[chosen, 1], s=4, alpha=0.6, label=value)
        axis.legend(fontsize=6, markerscale=2, title=name, title_fontsize=7)
        axis.set_title(f"{run.name}: PCA of mu, coloured by {name}", fontsize=9)
    axis.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of variance)", fontsize=8)
    axis.set_ylabel(f"PC2 ({100 * explained[1]:.0f}%)" if len(explained) > 1 else "PC2", fontsize=8)
    axis.tick_params(labelsize=7)
    return _save(figure, path)
