from __future__ import annotations

import subprocess
import sys

MODULES = ["synthetic", "tokenizer", "sources", "shards", "stream", "collate", "noising", "cli"]


def test_data_never_imports_deepspeed():
    code = "; ".join(f"import seq2vae.data.{name}" for name in MODULES)
    code += "; import sys; assert 'deepspeed' not in sys.modules, 'deepspeed imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
