"""What the renderer needs from a training config: its run directory, and whether its batch fits the job.

For our own trainer (`seq2vae.train`) the config is loaded and validated exactly as the trainer will
load it, so a typo fails at render time instead of after hours in the queue. For any other module
(a user's own entry point, the test stand-in) the YAML is read as plain data with the same
`key=value` override syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, parse_override, read_yaml_mapping
from ..train.config import DataConfig, gradient_accumulation_steps, load_train_config

TRAINER_MODULE = "seq2vae.train"


@dataclass(frozen=True)
class RunFacts:
    """The few training-config values a job script depends on."""

    run_dir: str
    micro_batch_size: int | None
    global_batch_size: int | None
    data_train: str | None = None  # shard directories (evaluation jobs read the valid split)
    data_valid: str | None = None


def check_config_file(path: str | Path) -> Path:
    """Returns the absolute path of an existing config file, or raises ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    return path.resolve()


def read_run_facts(config_path: Path, overrides: list[str], module: str, world_size: int) -> RunFacts:
    """Loads the config (+ overrides) and checks its global batch against `world_size` ranks.

    Raises ConfigError naming the key (and the file) on a bad config or a batch that does not divide.
    """
    if module == TRAINER_MODULE:
        config = load_train_config(config_path, overrides)
        data = config.data
        facts = RunFacts(config.run_dir, data.micro_batch_size, data.global_batch_size, data.train, data.valid)
        check_global_batch(facts, world_size, str(config_path))
        return facts
    tree = _plain_config(config_path, overrides)
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    facts = RunFacts(
        run_dir=str(tree.get("run_dir") or ""),
        micro_batch_size=data.get("micro_batch_size"),
        global_batch_size=data.get("global_batch_size"),
        data_train=data.get("train"),
        data_valid=data.get("valid"),
    )
    check_global_batch(facts, world_size, str(config_path))
    return facts


def check_global_batch(facts: RunFacts, world_size: int, source: str) -> None:
    """global = micro x accumulation x world size with an integral accumulation (the trainer's own
    rule, `gradient_accumulation_steps`), else ConfigError naming the file and the key."""
    if facts.global_batch_size is None or facts.micro_batch_size is None:
        return
    data = DataConfig(micro_batch_size=facts.micro_batch_size, global_batch_size=facts.global_batch_size)
    try:
        gradient_accumulation_steps(data, world_size)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _plain_config(config_path: Path, overrides: list[str]) -> dict[str, Any]:
    tree = read_yaml_mapping(config_path)
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return tree
