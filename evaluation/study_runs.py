"""Reading what a study produced: run directories and `seq2vae eval` result files, as `StudyRun`s.

A run directory (what `seq2vae train` writes) holds `config.yaml`, `metrics.jsonl` (training scalars),
`validation.jsonl` (periodic validation) and, once evaluated, `eval*.json` (`seq2vae sweep` writes
`eval.json`, a SLURM eval job `eval-<jobid>.json`). An eval JSON names its model; when that is a run
directory, its config and curves are read too; when it is a saved model, its vae_config.json
gives the `model.*` settings. Metrics come from the newest eval JSON when there is
one, else from the last validation record (no BLEU, probes or per-word perplexity then).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, read_yaml_mapping
from ..errors import UserError


class ReportError(UserError, ValueError):
    """A study input that cannot be read; the message names the path."""


# Settings that differ between runs by construction and say nothing about the model.
IGNORED_SETTINGS = ("run_dir", "resume", "stop_at_step")


@dataclass
class StudyRun:
    name: str  # unique within a report (the run directory's or the JSON file's name)
    source: Path  # the path the user gave
    settings: dict[str, Any]  # the run's config.yaml flattened to dotted keys ({} when unknown)
    result: dict | None  # the `seq2vae eval` JSON, when there is one
    validation: dict | None  # the last validation.jsonl record, "eval/" prefix removed
    curves: list[dict] = field(default_factory=list)  # metrics.jsonl records, in step order
    # True when `settings` is the run's whole resolved training config (its config.yaml): only then do
    # equal settings mean the same recipe, so only such runs are grouped across seeds (study_groups).
    config_known: bool = False

    @property
    def metrics(self) -> dict[str, Any]:
        """Scalar metrics: the eval JSON's, else the last validation's."""
        if self.result is not None:
            return self.result.get("metrics", {})
        return self.validation or {}

    @property
    def metrics_from(self) -> str:
        if self.result is not None:
            return "eval"
        return f"validation@{int(self.validation['step'])}" if self.validation else "-"

    @property
    def iw_samples(self) -> int | None:
        if self.result is not None:
            return self.result.get("iw_samples", self.result.get("config", {}).get("iw_samples"))
        return None if self.validation is None else self.validation.get("iw_samples")

    def as_eval_result(self) -> dict:
        """The run in the shape of an eval JSON, so `evaluation.report`'s tables can show it."""
        if self.result is not None:
            return self.result
        return {"metrics": self.metrics, "config": {"iw_samples": self.iw_samples}}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists -> {"phases.1.beta.value": 1.0, ...}; lists of scalars stay one value."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and any(isinstance(item, (dict, list)) for item in tree):
        items = ((str(index), item) for index, item in enumerate(tree))
    else:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}{key}."))
    return {key.rstrip("."): value for key, value in flat.items()} if prefix == "" else flat


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: cannot read: {error}") from None
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON (line {error.lineno}): {error.msg}") from None
    if not isinstance(value, dict) or not isinstance(value.get("metrics"), dict):
        raise ReportError(f"{path}: not a `seq2vae eval` result (no 'metrics' object)")
    return value


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ReportError(f"{path}:{line_number}: not valid JSON: {error.msg}") from None
    return records


def _read_settings(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return flatten(read_yaml_mapping(path))
    except ConfigError as error:
        raise ReportError(str(error)) from None


def _read_model_settings(model_dir: Path) -> dict[str, Any]:
    """A saved model's vae_config.json as `model.*` settings (an eval of an exported model has no run config)."""
    path = model_dir / "vae_config.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
        return flatten({"model": saved.get("vae", saved)})  # {"format_version", "vae": VAEConfig fields}
    except (OSError, json.JSONDecodeError):
        return {}  # the settings only label the run; the metrics are what the report needs


def _newest_eval_json(run_dir: Path) -> Path | None:
    candidates = sorted(run_dir.glob("eval*.json"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def _from_run_dir(run_dir: Path, source: Path, result: dict | None, name: str) -> StudyRun:
    validations = _read_jsonl(run_dir / "validation.jsonl")
    validation = None
    if validations:
        last = validations[-1]
        validation = {key.removeprefix("eval/"): value for key, value in last.items()}
    settings = _read_settings(run_dir)
    return StudyRun(name, source, settings, result, validation, _read_jsonl(run_dir / "metrics.jsonl"), bool(settings))


def load_run(path: str | Path) -> StudyRun:
    """A run directory or an eval JSON -> StudyRun. Raises ReportError naming the path."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such file or directory")
    if path.is_file():
        result = _read_json(path)
        model = Path(str(result.get("model", "")))
        if result.get("model") and (model / "config.yaml").is_file():
            return _from_run_dir(model, path, result, model.name)
        return StudyRun(path.stem, path, _read_model_settings(model) if result.get("model") else {}, result, None)
    eval_json = _newest_eval_json(path)
    run = _from_run_dir(path, path, _read_json(eval_json) if eval_json else None, path.name)
    if run.result is None and run.validation is None and not run.curves:
        raise ReportError(
            f"{path}: no metrics in this directory (expected eval*.json, metrics.jsonl or validation.jsonl)"
        )
    return run


def load_runs(paths: list[str | Path]) -> list[StudyRun]:
    """Loads every input; names are made unique by prefixing the parent directory's name."""
    if not paths:
        raise ReportError("no inputs: give run directories or eval JSON files")
    runs = [load_run(path) for path in paths]
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.source.resolve().parent.name}/{run.name}"
    seen: dict[str, int] = {}
    for run in runs:  # still equal (the same input twice): number them
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name}#{seen[run.name]}"
    return runs


def varied_settings(runs: list[StudyRun]) -> list[str]:
    """Dotted config keys whose value differs between the runs (in first-seen order)."""
    keys: list[str] = []
    for run in runs:
        keys += [key for key in run.settings if key not in keys]
    return [
        key
        for key in keys
        if key not in IGNORED_SETTINGS and len({json.dumps(run.settings.get(key), sort_keys=True) for run in runs}) > 1
    ]
