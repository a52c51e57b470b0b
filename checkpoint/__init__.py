"""Checkpoint machinery: DeepSpeed saves sealed with a manifest and resumed (also on another world size),
ZeRO consolidation, export to a `save_pretrained` directory, `model.init_from`, run-independent initial
weights, and the weights-only loading every checkpoint read goes through."""
