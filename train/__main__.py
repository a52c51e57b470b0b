"""`python -m seq2vae.train` / `torchrun ... -m seq2vae.train`: see seq2vae.train.cli."""

from .cli import main

raise SystemExit(main())
