"""Facts about the repository a stranger relies on: every command README.md gives parses and names only
flags its command has, CI runs README's test and install commands, and packaging installs only `seq2vae`.

README's prose is not tested; its commands are. The quickstart command itself runs in
tests/train/test_quickstart.py, the test command in .ci/run.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from seq2vae.cli import SUBCOMMANDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the test extra installs tomli, the same parser
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = ROOT / "README.md"
CI = ROOT / ".ci/run"
DRIVER = ROOT / "tests" / "command_driver.py"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def shell_commands(text: str) -> list[list[str]]:
    """The commands of shell text as argument lists: continuation lines joined, `&&` chains split, comments dropped."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            commands += [shlex.split(part) for part in line.split("&&")]
    return commands


def readme_commands() -> list[list[str]]:
    """The commands of README.md's fenced `bash` blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [command for block in blocks for command in shell_commands(block)]


def readme_spans() -> list[str]:
    """Every `seq2vae <command> ...` README shows in backticks: the command table and commands in prose."""
    return [span.replace("\\|", "|") for span in re.findall(r"`(seq2vae [a-z][^`]*)`", README.read_text())]


def dispatcher_argv(command: list[str]) -> list[str] | None:
    """The argv `seq2vae.cli.main` gets for a README command (`seq2vae ...` or torchrun of either module), else None."""
    if command[0] == "seq2vae":
        return command[1:]
    if command[0] == "torchrun" and "-m" in command:
        module, rest = command[command.index("-m") + 1], command[command.index("-m") + 2 :]
        return {"seq2vae.train": ["train", *rest], "seq2vae": rest}.get(module)
    return None


def is_pip_install(command: list[str]) -> bool:
    return command[:2] == ["pip", "install"]


def is_pytest(command: list[str]) -> bool:
    return command[:3] == ["python", "-m", "pytest"]


def ci_commands() -> list[list[str]]:
    return shell_commands(CI.read_text())


def run_driver(cases: dict[str, list[str]], tmp_path: Path) -> dict[str, dict]:
    """Runs each argv through the real dispatcher, all in one process (tests/command_driver.py)."""
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    completed = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])


def test_every_readme_command_is_one_these_tests_check():
    commands = readme_commands()
    assert commands, "README.md shows no ```bash block"
    for command in commands:
        assert dispatcher_argv(command) is not None or is_pip_install(command) or is_pytest(command), (
            f"README shows `{shlex.join(command)}`, which no test checks: use a seq2vae, torchrun, pip or pytest command"
        )


def test_command_table_lists_every_subcommand_once():
    rows = re.findall(r"^\| `seq2vae ([a-z-]+)", README.read_text(), flags=re.M)
    assert sorted(rows) == sorted(SUBCOMMANDS), f"README's command table {rows} != cli.SUBCOMMANDS {list(SUBCOMMANDS)}"


@pytest.fixture(scope="module")
def command_results(tmp_path_factory) -> dict[str, dict]:
    """`--help` of every README command line and of every subcommand (and nested subcommand) README names."""
    cases = {}
    for command in readme_commands():
        argv = dispatcher_argv(command)
        if argv is not None:
            cases[shlex.join(argv)] = [*argv, "--help"]
    for span in readme_spans():
        words = span.split()
        nested = words[2].split("|") if len(words) > 2 and re.fullmatch(r"[a-z|]+", words[2]) else []
        for argv in [[words[1]], *([words[1], word] for word in nested)]:
            cases[" ".join(argv)] = [*argv, "--help"]
    return run_driver(cases, tmp_path_factory.mktemp("readme-commands"))


@pytest.mark.parametrize("command", [shlex.join(c) for c in readme_commands() if dispatcher_argv(c) is not None])
def test_readme_command_parses_with_the_flags_it_shows(command, command_results):
    argv = dispatcher_argv(shlex.split(command))
    result = command_results[shlex.join(argv)]
    # --help comes last, so argparse has converted and checked every option before it prints the help.
    assert result["exit_code"] == 0, f"`{command} --help`: {result['stderr'][-2000:]}"
    for flag in FLAG.findall(shlex.join(argv)):  # torchrun's own flags stay out
        assert re.search(rf"(?<![\w-]){flag}(?![\w-])", result["stdout"]), f"`{command}`: {flag} is not an option of it"
    overrides = [token for token in argv[1:] if "=" in token and not token.startswith("-")]
    if "--config" in argv:
        config = ROOT / argv[argv.index("--config") + 1]
        assert config.is_file(), f"`{command}`: no config {config}"
        if argv[0] == "train":
            from seq2vae.train.config import load_train_config

            load_train_config(config, overrides)  # raises ConfigError naming a key the config does not have
    else:
        assert not overrides, f"`{command}`: overrides without a --config to check them against"


@pytest.mark.parametrize("span", readme_spans())
def test_every_command_named_in_readme_exists_with_the_flags_shown(span, command_results):
    words = span.split()
    assert words[1] in SUBCOMMANDS, f"README names `{span}`, but seq2vae has no command {words[1]!r}"
    helps = [result["stdout"] for argv, result in command_results.items() if argv.split()[0] == words[1]]
    for flag in FLAG.findall(span):
        assert any(re.search(rf"(?<![\w-]){flag}(?![\w-])", text) for text in helps), f"`{span}`: no option {flag}"


def test_ci_runs_the_test_command_readme_gives():
    readme_tests = [c for c in readme_commands() if is_pytest(c)]
    ci_tests = [c for c in ci_commands() if c[1:3] == ["-m", "pytest"]]
    assert len(ci_tests) == 1, ci_tests
    # README's first test command is CI's, spelled with `python` where CI spells the interpreter `python3`.
    assert ["python3", *readme_tests[0][1:]] == ci_tests[0], (readme_tests[0], ci_tests[0])
    # Any other is a tier of it: the same command plus `-m EXPRESSION` over markers pyproject registers.
    markers = {line.split(":")[0] for line in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    for tier in readme_tests[1:]:
        assert tier[: len(readme_tests[0])] == readme_tests[0] and tier[len(readme_tests[0])] == "-m", tier
        words = set(re.findall(r"\w+", tier[len(readme_tests[0]) + 1])) - {"not", "and", "or"}
        assert words and words <= markers, f"{tier}: markers {words - markers} are not registered in pyproject.toml"


def test_ci_lints_before_the_tests():
    text = CI.read_text()
    assert "ruff check ." in text and text.index("ruff check .") < text.index("-m pytest")
    assert any(requirement.startswith("ruff") for requirement in PYPROJECT["project"]["optional-dependencies"]["test"])


def test_readme_installs_as_ci_does():
    readme_pips = [c for c in readme_commands() if is_pip_install(c)]
    ci_pips = [c[c.index("install") + 1 :] for c in ci_commands() if c[1:4] == ["-m", "pip", "install"]]
    assert len(readme_pips) >= 2, readme_pips
    # torch first, with CI's pin, so no looser requirement pulls a multi-GB CUDA build.
    readme_torch = [token for token in readme_pips[0] if token.startswith("torch==")]
    ci_torch = [token for token in ci_pips[0] if token.startswith("torch==")]
    assert readme_torch and readme_torch == ci_torch, (readme_pips[0], ci_pips[0])
    readme_project = next(c for c in readme_pips if "-e" in c)
    ci_project = next(c for c in ci_pips if "-e" in c)
    assert readme_project[readme_project.index("-e") + 1] == "." and ci_project[ci_project.index("-e") + 1] == ".[test]"
    readme_constraints = [readme_project[i + 1] for i, t in enumerate(readme_project) if t == "-c"]
    ci_constraints = [ci_project[i + 1] for i, t in enumerate(ci_project) if t == "-c"]
    assert readme_constraints == ci_constraints, (readme_project, ci_project)
    for constraints in readme_constraints:
        assert (ROOT / constraints).is_file(), f"README installs with -c {constraints}, which is not in the repository"


def test_ci_installs_slurm_for_the_slurm_tests():
    text = CI.read_text()
    for package in ("slurmctld", "slurmd", "munge"):
        assert package in text


def test_only_the_seq2vae_import_root_is_installed():
    project = PYPROJECT
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
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": "test"}):
            continue  # not installed on the Python CI runs (e.g. tomli below 3.11)
        pinned = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pinned), (requirement, pinned)


def test_ci_installs_through_the_constraints_file():
    installs = [line for line in (ROOT / ".ci/run").read_text().splitlines() if "pip install" in line
                and not line.lstrip().startswith("#") and "apt" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
