"""`python -m seq2vae.train` / `torchrun ... -m seq2vae.train`: see seq2vae.train.cli."""

from seq2vae.train.cli import main

raise SystemExit(main())
