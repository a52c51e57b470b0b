"""Runs several `seq2vae` command lines through the real dispatcher (`seq2vae.cli.main`) in one process.

Importing torch, transformers and DeepSpeed takes most of a failing command's time; one process for
many bad inputs keeps the test fast. Input: a JSON file {name: argv}. Output (stdout, one JSON object):
{name: {"exit_code": int, "stdout": str, "stderr": str}}; argparse's exits (--help: 0, a bad flag: 2)
are exit codes like any other.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

from seq2vae.cli import main


def run_all(cases: dict[str, list[str]]) -> dict[str, dict]:
    results = {}
    for name, argv in cases.items():
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            try:
                exit_code = main(argv)
            except SystemExit as exit_:
                exit_code = exit_.code if isinstance(exit_.code, int) else 1
        results[name] = {"exit_code": exit_code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as stream:
        print(json.dumps(run_all(json.load(stream))))
