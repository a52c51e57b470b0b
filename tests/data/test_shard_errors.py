"""`seq2vae shard` bad inputs: one line on stderr, exit code 2, nothing left behind (real dispatcher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DRIVER = Path(__file__).parents[1] / "command_driver.py"


def test_bad_shard_inputs_fail_at_once_with_one_line(tmp_path, tokenizer_dir):
    good = tmp_path / "corpus.txt"
    good.write_text("a dog ran .\nthe old man reads .\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    (tmp_path / "plain-directory").mkdir()
    (tmp_path / "existing-file").write_text("x")
    common = ["--tokenizer", str(tokenizer_dir), "--quiet"]
    cases = {
        # A missing path without an extension used to be taken for a hub dataset name (28 s of retries).
        "missing path": (["shard", str(tmp_path / "corpus"), "--output", str(tmp_path / "out1"), *common], "does not exist"),
        "plain directory": (
            ["shard", str(tmp_path / "plain-directory"), "--output", str(tmp_path / "out2"), *common],
            "not a saved Hugging Face dataset",
        ),
        "missing tokenizer": (
            ["shard", str(good), "--output", str(tmp_path / "out3"), "--tokenizer", str(tmp_path / "no-tokenizer"), "--quiet"],
            "--tokenizer",
        ),
        "output is a file": (["shard", str(good), "--output", str(tmp_path / "existing-file"), *common], "is an existing file"),
        "nothing usable": (["shard", str(blank), "--output", str(tmp_path / "out5"), *common], "no usable training samples"),
    }
    (tmp_path / "cases.json").write_text(json.dumps({name: argv for name, (argv, _) in cases.items()}))
    driver = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads(driver.stdout.splitlines()[-1])
    for name, (_argv, words) in cases.items():
        exit_code, stderr = results[name]["exit_code"], results[name]["stderr"]
        lines = [line for line in stderr.splitlines() if line.strip()]
        context = f"{name}: exit code {exit_code}\n{stderr[-2000:]}"
        assert exit_code == 2 and len(lines) == 1 and lines[0].startswith("seq2vae shard: error: "), context
        assert words in lines[0] and "Traceback" not in stderr, context
    assert (tmp_path / "existing-file").read_text() == "x"
    for output in ("out1", "out2", "out3", "out5"):  # no empty directory left behind by a failed run
        assert not (tmp_path / output).exists(), output
