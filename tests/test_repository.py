"""Facts about the repository a stranger relies on: README, CI and packaging agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The shell commands in README.md's fenced `bash` blocks, one per line."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_test_command_readme_gives():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    # README may show `python`, CI spells the interpreter `python3`; the command is otherwise identical.
    assert test_command.replace("python ", "python3 ") in ci_lines or test_command in ci_lines, test_command


def test_ci_installs_pinned_torch_before_the_project():
    text = (ROOT / ".ci/run").read_text()
    assert text.index("torch==2.13.0") < text.index("-e '.[test]'")
    for package in ("slurmctld", "slurmd", "munge"):
        assert package in text


def test_only_the_seq2vae_import_root_is_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    assert all(name == "seq2vae" or name.startswith("seq2vae.") for name in packages)
    assert project["project"]["scripts"] == {"seq2vae": "seq2vae.cli:main"}
    # Every subpackage folder named in the mapping exists and is a package.
    for name in packages:
        folder = ROOT.joinpath(*name.split(".")[1:])
        assert (folder / "__init__.py").is_file(), folder


def _requirements():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"] + project["optional-dependencies"]["test"]]


def _constraints() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_dependency_is_bounded_and_pinned_within_its_bounds():
    """A release we never ran cannot arrive unnoticed: each requirement has an upper bound, and the
    tested version of each (constraints.txt, what CI installs) lies inside its range."""
    from packaging.utils import canonicalize_name

    pins = _constraints()
    for requirement in _requirements():
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier), requirement
        pinned = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pinned), (requirement, pinned)


def test_ci_installs_through_the_constraints_file():
    installs = [line for line in (ROOT / ".ci/run").read_text().splitlines() if "pip install" in line
                and not line.lstrip().startswith("#") and "apt" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
