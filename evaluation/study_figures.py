"""The figures of a study report (matplotlib, Agg backend, fixed pixel sizes so pages lay out alike).

Each function draws one PNG from `StudyRun`s (the rate-distortion figure: from the settings' `RunGroup`s,
so seeds become interval bars) and returns its path, or None when no run has the data it needs (a run
without curves, an eval JSON without latents, runs that all have the same rate, ...).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on cluster nodes or in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .intervals import MeanInterval  # noqa: E402
from .study_groups import RunGroup, is_rate_setting, rate_sweeps  # noqa: E402
from .study_runs import StudyRun  # noqa: E402

DPI = 100
# (width, height) in inches; at DPI 100 the PNGs are 1000 x 320 and 1000 x 400 pixels, 500 x 400 for PCA.
WIDE_PANEL_ROW = (10.0, 3.2)
WIDE_FIGURE = (10.0, 4.0)
PCA_FIGURE = (5.0, 4.0)
RATE_FIGURE = (9.0, 4.5)  # 900 x 450: the legend (one entry per rate sweep) sits right of the axes

# Training scalars drawn as curves: (metrics.jsonl key, axis title).
CURVES = (("train/recon", "reconstruction (nats/sentence)"), ("train/kl", "KL (nats/sentence)"), ("train/beta", "beta"))
# Metrics drawn against the varied setting: (metric key, axis title).
SETTING_METRICS = (("mi_dataset", "MI, q(z) over the set (nats)"), ("active_units", "active units"),
                   ("iw_nll", "IW-NLL (nats/sentence)"))
# A metadata field colours the PCA when it has this many distinct values at most.
MAX_COLOUR_CLASSES = 12
# Runs "differ in rate" when their mean KLs span at least this many nats; closer, the figure is one blob.
MIN_RATE_SPREAD = 0.5
# About this many -ELBO iso-lines across the plotted range.
ISO_LINES = 6
# A rate sweep's legend entry (its other settings) is cut to this many characters, in lines of 48.
LEGEND_CHARACTERS = 144


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


def _error_bars(intervals: list[MeanInterval]) -> np.ndarray:
    """[2, N] distances from the mean to the interval's ends (0 for a single run)."""
    return np.array([[0.0 if i.low is None else i.mean - i.low for i in intervals],
                     [0.0 if i.high is None else i.high - i.mean for i in intervals]])


def _iso_elbo_lines(axis, true_nll: float | None) -> None:
    """Light lines recon + KL = c across the current view (labelled at its top edge), the view kept."""
    (x0, x1), (y0, y1) = axis.get_xlim(), axis.get_ylim()
    levels = list(MaxNLocator(ISO_LINES).tick_values(x0 + y0, x1 + y1))
    lines = [(c, "0.7", ":", f"-ELBO {c:g}") for c in levels]
    if true_nll is not None:  # the data's own NLL: E[-ELBO] of any model of these sentences is above it
        lines.append((true_nll, "0.35", "--", f"true NLL {true_nll:.1f}"))
    for level, colour, style, text in lines:
        axis.plot([x0, x1], [level - x0, level - x1], color=colour, linestyle=style, linewidth=0.9, zorder=0)
        if x0 <= level - y1 <= x1:  # labelled where it leaves the top edge, else where it enters on the left
            axis.annotate(text, (level - y1, y1), fontsize=6, color=colour, ha="left", va="top",
                          xytext=(2, -2), textcoords="offset points")
        elif y0 <= level - x0 <= y1:
            axis.annotate(text, (x0, level - x0), fontsize=6, color=colour, ha="left", va="bottom",
                          xytext=(2, 2), textcoords="offset points")
    axis.set_xlim(x0, x1)
    axis.set_ylim(y0, y1)


def rate_distortion(groups: list[RunGroup], settings: list[str], path: Path) -> Path | None:
    """Distortion (recon NLL) against rate (KL): one point per setting, 95% interval bars over its seeds,
    a line through each rate sweep (settings equal but for the rate knobs) in KL order, and the -ELBO
    iso-lines recon + KL = const (and, on synthetic data, the one at the true NLL). None when the
    settings' KLs span less than MIN_RATE_SPREAD nats."""
    measured = [group for group in groups if group.interval("kl") and group.interval("recon_nll")]
    rates = [group.interval("kl").mean for group in measured]
    if len(measured) < 2 or max(rates) - min(rates) < MIN_RATE_SPREAD:
        return None
    rate_keys = [key for key in settings if is_rate_setting(key)]
    figure, axis = plt.subplots(figsize=RATE_FIGURE, dpi=DPI, constrained_layout=True)
    sweeps = rate_sweeps(measured, settings)
    for index, (label, members) in enumerate(sweeps):
        members = sorted(members, key=lambda group: group.interval("kl").mean)
        kl = [group.interval("kl") for group in members]
        recon = [group.interval("recon_nll") for group in members]
        axis.errorbar([i.mean for i in kl], [i.mean for i in recon], xerr=_error_bars(kl), yerr=_error_bars(recon),
                      fmt="o-" if len(members) > 1 else "o", color=f"C{index % 10}", markersize=4, linewidth=1,
                      elinewidth=0.8, capsize=2, label=label)
        # A sweep: each point says its value of the knobs that move within the sweep.
        knobs = [key for key in rate_keys if len({str(group.settings.get(key)) for group in members}) > 1]
        for group, x, y in zip(members, kl, recon):
            text = ", ".join(f"{key.split('.')[-1]}={group.settings.get(key)}" for key in knobs)
            if text:
                axis.annotate(text, (x.mean, y.mean), fontsize=6, xytext=(3, 3), textcoords="offset points")
    true_nll = [group.interval("true_nll") for group in measured]
    _iso_elbo_lines(axis, None if None in true_nll else float(np.mean([i.mean for i in true_nll])))
    axis.set_xlabel("rate: KL (nats/sentence)", fontsize=8)
    axis.set_ylabel("distortion: recon NLL (nats/sentence)", fontsize=8)
    axis.set_title("rate-distortion (bars: 95% interval over seeds)", fontsize=9)
    axis.tick_params(labelsize=7)
    if len(sweeps) <= 12:  # more names would not fit beside the axes
        handles, labels = axis.get_legend_handles_labels()
        iso = Line2D([], [], color="0.7", linestyle=":", linewidth=0.9)
        labels = [textwrap.shorten(label, LEGEND_CHARACTERS, placeholder=" ...") for label in labels]
        axis.legend([*handles, iso], [*(textwrap.fill(label, 48) for label in labels), "-ELBO = recon + KL"],
                    fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(figure, path)
