"""Prints constraints.txt for the running environment: the exact installed version of every package in
the dependency closure of seq2vae[test] (torch without its local build label, so the file also pins a
CUDA machine to the same release). Used by bench/compat.sh --freeze."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# The exact versions CI installs and the test suite passed with (torch 2.13.0 CPU, Python 3.11, Linux):
#   pip install -c constraints.txt torch==2.13.0 && pip install -c constraints.txt -e '.[test]'
# pyproject.toml's bounds say what may work; this file says what was tested. To move a pin, run
# bench/compat.sh (newest versions the bounds allow, in a fresh venv) and record the result in
# docs/COMPATIBILITY.md. Regenerate from a passing environment with bench/compat.sh --freeze.
"""
# Build tooling, not a runtime dependency: pinning it would fight the build backends' own requirements.
LEFT_OUT = {"setuptools", "pip", "wheel"}


def closure(root: str = "seq2vae", extras: tuple[str, ...] = ("test",)) -> dict[str, str]:
    versions: dict[str, str] = {}
    pending = [(root, extras)]
    while pending:
        name, wanted = pending.pop()
        key = canonicalize_name(name)
        if key in versions:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if key != root:
            versions[key] = dist.version.split("+")[0]
        for line in dist.requires or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            pending.append((requirement.name, tuple(requirement.extras)))
    return {name: version for name, version in versions.items() if name not in LEFT_OUT}


if __name__ == "__main__":
    print(HEADER, end="")
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")
