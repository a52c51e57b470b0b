"""The package's dependency order (docs/ARCHITECTURE.md, "Layers"), read from every import.

Each room of `seq2vae` sits in one layer and may import only rooms of lower layers; rooms of one layer
never import each other. Imports inside functions count the same as module-level ones, so a cycle
cannot hide behind a deferred import. Also: training reaches evaluation only through the names
`seq2vae.evaluation` exports, and no room imports another room's private (`_name`) names.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Lowest first. A room is a top-level module or sub-package of `seq2vae`.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("config", "hardware"),
    ("distributed",),
    ("model", "data"),
    ("plan", "checkpoint"),
    ("evaluation",),
    ("train",),
    ("slurm",),
    ("commands",),
    ("cli", "__init__"),
    ("__main__",),
]
LAYER_OF = {room: index for index, rooms in enumerate(LAYERS) for room in rooms}
# Which names of a higher room's package a lower-layer room may not see is covered by LAYERS; this is
# the narrower rule for a room that may import another: only that package's public API.
PUBLIC_API_ONLY = {("train", "evaluation")}
SOURCE_ROOTS = [path for path in REPO.iterdir() if path.name not in {"tests", "bench", "build", "docs", "configs"}]


@dataclass(frozen=True)
class Import:
    file: str
    line: int
    room: str  # the importing room
    target: str  # the imported module, absolute ("seq2vae.x.y")
    names: tuple[str, ...]


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["seq2vae", *parts])


def imports_of(source: str, module: str, is_package: bool, file: str) -> list[Import]:
    """Every import of a `seq2vae` module in `source` (module level and inside functions)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[tuple[str, tuple[str, ...]]] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = tuple(alias.name for alias in node.names)
            if target == "seq2vae":  # `from .. import evaluation` imports the room itself
                targets += [(f"seq2vae.{name}", ()) for name in names if name != "__version__"]
            else:
                targets.append((target, names))
        elif isinstance(node, ast.Import):
            targets += [(alias.name, ()) for alias in node.names]
        for target, names in targets:
            if target.startswith("seq2vae."):
                found.append(Import(file, node.lineno, room_of(module), target, names))
    return found


def all_imports() -> list[Import]:
    found = []
    for root_item in SOURCE_ROOTS:
        paths = [root_item] if root_item.suffix == ".py" else sorted(root_item.rglob("*.py")) if root_item.is_dir() else []
        for path in paths:
            module = module_name(path, REPO)
            found += imports_of(path.read_text(), module, path.name == "__init__.py", str(path.relative_to(REPO)))
    return found


def violations(imports: list[Import]) -> list[str]:
    problems = []
    for item in imports:
        theirs = room_of(item.target)
        if theirs == item.room:
            continue
        where = f"{item.file}:{item.line}: {item.room} imports {item.target}"
        if item.room not in LAYER_OF or theirs not in LAYER_OF:
            problems.append(f"{where}: room missing from LAYERS (add it to tests/test_layers.py and docs/ARCHITECTURE.md)")
        elif LAYER_OF[theirs] >= LAYER_OF[item.room]:
            problems.append(f"{where}: {theirs} is not in a lower layer than {item.room}")
        elif (item.room, theirs) in PUBLIC_API_ONLY and item.target != f"seq2vae.{theirs}":
            problems.append(f"{where}: {item.room} may import only `seq2vae.{theirs}`'s exported names")
        private = [name for name in item.names if name.startswith("_")]
        if private:
            problems.append(f"{where}: private name(s) {private} of another room")
    return problems


def test_every_import_goes_down_the_layers():
    imports = all_imports()
    assert len(imports) > 150  # the reader found the project's imports, not an empty tree
    assert violations(imports) == []


def test_every_room_is_in_a_layer():
    rooms = {path.stem if path.suffix == ".py" else path.name for path in SOURCE_ROOTS
             if path.suffix == ".py" or (path / "__init__.py").is_file()}
    assert rooms - set(LAYER_OF) == set()


@pytest.mark.parametrize(
    "module, source, expected",
    [
        # A reverse import at module level, and one deferred into a function: both are caught.
        ("seq2vae.model.vae", "from ..train.engine import Engine\n", "train is not in a lower layer than model"),
        ("seq2vae.evaluation.cli", "def main():\n    from ..train import trainer\n", "train is not in a lower layer"),
        ("seq2vae.plan.memory", "import seq2vae.checkpoint.saving\n", "checkpoint is not in a lower layer than plan"),
        ("seq2vae.train.trainer", "from ..evaluation.harness import validate\n", "only `seq2vae.evaluation`'s exported"),
        ("seq2vae.train.preflight", "from ..model.build import _tokenizer\n", "private name(s) ['_tokenizer']"),
        ("seq2vae.train.trainer", "from .. import slurm\n", "slurm is not in a lower layer than train"),
    ],
)
def test_a_reverse_or_private_import_is_reported(module, source, expected):
    problems = violations(imports_of(source, module, False, "example.py"))
    assert len(problems) == 1 and expected in problems[0], problems


def test_allowed_imports_are_not_reported():
    source = "from ..evaluation import validate\nfrom ..model.build import load_tokenizer\nfrom .config import TrainConfig\n"
    assert violations(imports_of(source, "seq2vae.train.trainer", False, "example.py")) == []
