"""Runs several `seq2vae` command lines through the real dispatcher (`seq2vae.cli.main`) in one process.

Importing torch, transformers and DeepSpeed takes most of a failing command's time; one process for
many bad inputs keeps the test fast. Input: a JSON file {name: argv}. Output (stdout, one JSON object):
{name: {"exit_code": int, "stderr": str}}.
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
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            exit_code = main(argv)
        results[name] = {"exit_code": exit_code, "stderr": stderr.getvalue()}
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as stream:
        print(json.dumps(run_all(json.load(stream))))
