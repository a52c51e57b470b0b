"""Backbone and tokenizer as local snapshots, resolved once on the submitting machine.

A job whose every rank calls `from_pretrained("google/flan-t5-xl")` sends hundreds of hub requests at
once (rate limits, 429s, half-written cache entries when ranks of one node race on the same files),
and many clusters' compute nodes cannot reach the internet at all. So rendering resolves each hub
name to a complete snapshot directory in the local Hugging Face cache (downloading it there if
needed), the job gets that directory as `model.backbone=...` / `model.tokenizer=...`, and runs with
`HF_HUB_OFFLINE=1` (see `job_environment`): every rank then only reads a finished snapshot.

A local directory is used as it is; the debug backbones need nothing. The cache must be on a file
system the compute nodes see (set HF_HOME to shared storage on clusters where home is not shared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from ..config import ConfigError
from ..model.debug import DEBUG_BACKBONES
from ..train.config import load_train_config
from .run_config import TRAINER_MODULE, _plain_config, check_config_file

Role = Literal["backbone", "tokenizer"]

# Weights in formats the trainer never reads (it loads safetensors; see _LEGACY_WEIGHTS for models
# published only as pytorch_model.bin): skipping them often halves the download.
IGNORE_PATTERNS = ["*.bin", "*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "*.tflite", "*.gguf", "*.pt", "*.pth"]
_LEGACY_WEIGHTS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json", "sentencepiece.bpe.model")


def offline_overrides(config: str | Path, overrides: list[str], module: str | None = None) -> list[str]:
    """`key=value` overrides pointing `model.backbone` / `model.tokenizer` at local snapshots.

    Only hub names produce an override; a config without a `model` section (a user's own module)
    produces none. Raises ConfigError naming the key when a name cannot be resolved.
    """
    model = _model_section(check_config_file(config), overrides, module or TRAINER_MODULE)
    result = []
    for role in ("backbone", "tokenizer"):
        name = model.get(role)
        if isinstance(name, str) and is_hub_name(name):
            snapshot = resolve_snapshot(name, role)
            if role == "backbone" and model.get("tokenizer") is None and _missing(Path(snapshot), "tokenizer"):
                # The trainer falls back to the backbone's tokenizer, which this snapshot lacks.
                raise ConfigError(f"model.tokenizer is unset and the snapshot of model.backbone '{name}' has no tokenizer: "
                                  "set model.tokenizer")
            result.append(f"model.{role}={snapshot}")
    return result


def is_hub_name(name: str) -> bool:
    """True for 'org/model' or 'model' names that are neither debug backbones nor existing directories.

    A path-like name (absolute, './', '../', '~', more than one '/') that does not exist is an error:
    taking a mistyped directory for a hub name would send the job to the hub for it.
    """
    if name in DEBUG_BACKBONES or Path(name).expanduser().is_dir():
        return False
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise ConfigError(f"'{name}' is not a directory (and not a hub name of the form org/model)")
    return True


def resolve_snapshot(name: str, role: Role, cache_dir: str | Path | None = None) -> str:
    """The local directory of a complete snapshot of hub repo `name`, downloading it if needed.

    The cache is tried first without any network (a finished snapshot is used as it is); only a
    missing or incomplete one is downloaded. `cache_dir` None = the Hugging Face cache (HF_HOME).
    Raises ConfigError naming `model.<role>` when the snapshot is incomplete and cannot be downloaded.
    """
    from huggingface_hub import snapshot_download

    def download(local_files_only: bool, **patterns) -> Path:
        return Path(snapshot_download(repo_id=name, cache_dir=cache_dir, local_files_only=local_files_only, **patterns))

    try:
        snapshot = download(local_files_only=True, ignore_patterns=IGNORE_PATTERNS)
        if not _missing(snapshot, role):
            return str(snapshot)
    except Exception:  # not cached (LocalEntryNotFoundError) or cached but incomplete
        pass
    try:
        snapshot = download(local_files_only=False, ignore_patterns=IGNORE_PATTERNS)
        if role == "backbone" and not any(snapshot.glob("*.safetensors")):
            snapshot = download(local_files_only=False, allow_patterns=_LEGACY_WEIGHTS)
    except Exception as error:
        raise ConfigError(
            f"model.{role} '{name}': could not download it from the Hugging Face hub ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); download it on a machine with internet access "
            f"(`hf download {name}`) and pass its directory as model.{role}=DIR"
        ) from None
    missing = _missing(snapshot, role)
    if missing:
        # snapshot_download falls back to the cached folder when the hub cannot be reached.
        raise ConfigError(
            f"model.{role} '{name}': the snapshot in {snapshot} has no {missing}, and the hub did not provide it "
            f"(no internet here?): download it on a machine with internet access (`hf download {name}`) and "
            f"pass its directory as model.{role}=DIR"
        )
    return str(snapshot)


def _missing(snapshot: Path, role: Role) -> str | None:
    """What a usable snapshot lacks ('config.json', 'weights', 'tokenizer files'), or None."""
    if role == "backbone":
        if not (snapshot / "config.json").is_file():
            return "config.json"
        if not any(snapshot.glob("*.safetensors")) and not any(snapshot.glob("pytorch_model*.bin")):
            return "weights (*.safetensors or pytorch_model*.bin)"
        return None
    if not any((snapshot / name).is_file() for name in _TOKENIZER_FILES):
        return f"tokenizer files (one of {', '.join(_TOKENIZER_FILES)})"
    return None


def _model_section(config_path: Path, overrides: list[str], module: str) -> dict[str, Any]:
    if module == TRAINER_MODULE:
        model = load_train_config(config_path, overrides).model
        return {"backbone": model.backbone, "tokenizer": model.tokenizer}
    section = _plain_config(config_path, overrides).get("model")
    return section if isinstance(section, dict) else {}
