"""Plain-text tables of evaluation results: one run, or several runs side by side (`--compare`)."""

from __future__ import annotations

from collections.abc import Callable


def _number(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 1e6:
        return f"{value:.3e}"
    return f"{value:.{digits}f}"


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _rows(result: dict) -> list[tuple[str, str]]:
    """(label, formatted value) rows for one result (the JSON `seq2vae eval` writes)."""
    metrics = result.get("metrics", {})
    reconstruction = result.get("reconstruction", {})
    get: Callable[[str], object] = metrics.get
    num_samples = result.get("config", {}).get("iw_samples", "?")
    active = get("active_units")
    rows = [
        ("sentences", _number(get("num_sentences"))),
        ("predicted tokens (incl. EOS)", _number(get("num_tokens"))),
        ("words scored (+1 EOS per sentence)", _number(get("num_words"))),
        ("sentences truncated before scoring", _number(get("num_truncated"))),
        ("recon NLL (nats/sentence)", _number(get("recon_nll"))),
        ("KL (nats/sentence)", _number(get("kl"))),
        ("-ELBO (nats/sentence)", _number(get("neg_elbo"))),
        ("IW samples K", str(num_samples)),
        ("IW-NLL (nats/sentence)", _number(get("iw_nll"))),
        ("PPL per token, ELBO bound", _number(get("ppl_elbo_per_token"))),
        ("PPL per token, IW bound", _number(get("ppl_iw_per_token"))),
        ("PPL per word, ELBO bound", _number(get("ppl_elbo_per_word"))),
        ("PPL per word, IW bound", _number(get("ppl_iw_per_word"))),
        ("MI, q(z) over the whole set (nats)", _number(get("mi_dataset"), 3)),
        ("MI, q(z) per equal-length mini-batch (nats)", _number(get("mi_mini_batch"), 3)),
        ("MI largest mini-batch M", _number(get("mi_mini_batch_size"))),
        (
            "active units (Var mu_d > delta)",
            "-" if active is None else f"{active}/{get('latent_dim')} (delta {get('active_unit_delta')})",
        ),
        *_diagnostic_rows(metrics),
        ("reconstruction token accuracy", _percent(reconstruction.get("token_accuracy"))),
        ("reconstruction exact match", _percent(reconstruction.get("exact_match"))),
        ("reconstruction BLEU", _number(reconstruction.get("bleu"))),
    ]
    for name, probe in sorted(result.get("probes", {}).get("factors", {}).items()):
        rows.append(
            (f"probe '{name}' held-out acc (majority)", f"{_percent(probe['accuracy'])} ({_percent(probe['majority_baseline'])})")
        )
    profile = result.get("profile") or {}
    for key, value in profile.items():  # a reference's own numbers (evaluation/profiles.py), labelled with its name
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((f"{profile['name']} {key}", _number(value, 3)))
    return rows


PRIOR_LABELS = {"standard_normal": "N(0, I)", "gmm": "learned GMM", "flow": "learned flow"}
SHOWN_PRIOR_SAMPLES = 5


def _diagnostic_rows(metrics: dict) -> list[tuple[str, str]]:
    """Rows of evaluation/diagnostics.py's metrics that are present (older results lack them)."""
    get = metrics.get
    saturated = get("mi_saturated")
    rows = [
        ("MI at its ceiling log N (saturated)", "-" if saturated is None else ("yes" if saturated else "no")),
        ("MI upper bound: KL - Gaussian mismatch (nats)", _number(get("mi_upper_bound"))),
        ("prior mismatch KL(q(z)||p) >= (Gaussian fit)", _number(get("prior_mismatch_gaussian"))),
        ("prior mismatch KL - MI (mixture)", _number(get("prior_mismatch_mixture"))),
        ("recon NLL with own z / other z / prior z",
         " / ".join(_number(get(k)) for k in ("recon_nll_own_z", "recon_nll_other_z", "recon_nll_prior_z"))),
        ("decoder reliance: NLL gain of own z vs other z", _number(get("reliance_gain_vs_other_z"))),
        (f"KL terms below free bits ({get('free_bits_threshold')})", _percent(get("free_bits_share_below"))),
        ("true NLL (synthetic grammar, nats)", _number(get("true_nll"))),
        ("data entropy H(x) (nats)", _number(get("data_entropy"))),
        ("-ELBO gap to true NLL", _number(get("neg_elbo_gap_to_true_nll"))),
        ("IW-NLL gap to true NLL", _number(get("iw_nll_gap_to_true_nll"))),
    ]
    for name, label in PRIOR_LABELS.items():
        rows.append((f"prior samples grammatical, {label}", _percent(get(f"prior_{name}_grammatical"))))
        rows.append((f"prior samples distinct, {label}", _percent(get(f"prior_{name}_distinct"))))
    rows.append(("interpolation points grammatical", _percent(get("interpolation_grammatical"))))
    return [(label, value) for label, value in rows if value.strip("-/ ")]


def format_table(result: dict) -> str:
    """One run: metric rows, then notes, reconstructions, prior samples and interpolations."""
    rows = _rows(result)
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    examples = result.get("reconstruction", {}).get("examples", [])
    if examples:
        lines.append("reconstructions (greedy from mu):")
        for example in examples:
            lines += [f"  in : {example['input']}", f"  out: {example['reconstruction']}"]
    by_prior = result.get("samples_by_prior") or {"standard_normal": result.get("prior_samples", [])}
    for name, texts in by_prior.items():
        if texts:
            lines.append(f"samples from the prior {PRIOR_LABELS.get(name, name)} "
                         f"(first {min(len(texts), SHOWN_PRIOR_SAMPLES)} of {len(texts)}):")
            lines += [f"  {text}" for text in texts[:SHOWN_PRIOR_SAMPLES]]
    for interpolation in result.get("interpolations", []):
        lines.append(f"interpolation: {interpolation['from']!r} -> {interpolation['to']!r}")
        lines += [f"  {text}" for text in interpolation["steps"]]
    return "\n".join(lines)


def format_comparison(results: list[tuple[str, dict]]) -> str:
    """Several runs side by side: one column per (name, result), rows in the single-run order."""
    columns = [(name, dict(_rows(result))) for name, result in results]
    labels: list[str] = []
    for _, rows in columns:
        labels += [label for label in rows if label not in labels]
    label_width = max(len(label) for label in labels)
    widths = [max(len(name), *(len(rows.get(label, "-")) for label in labels)) for name, rows in columns]
    header = " " * label_width + "  " + "  ".join(f"{name:>{w}}" for (name, _), w in zip(columns, widths))
    lines = [header]
    for label in labels:
        cells = "  ".join(f"{rows.get(label, '-'):>{w}}" for (_, rows), w in zip(columns, widths))
        lines.append(f"{label:<{label_width}}  {cells}")
    return "\n".join(lines)
