"""Data for seq2vae: corpora in, pre-tokenised webdataset shards, streamed batches out.

Modules (import them directly; nothing heavy is imported here):
- `synthetic`: the embedded corpus generated from known discrete factors (quickstart, probes).
- `tokenizer`: train a small tokenizer offline.
- `sources`: text / JSONL / Hugging Face readers with bad-input accounting.
- `shards`: the shard format, meta.json, and `write_shards` (the `seq2vae shard` command, in `cli`).
- `stream`: `build_loader` (exact multi-rank streaming, resumable), `read_split`, `check_tokenizer`.
- `collate`: padding into the batch contract; `noising`: vectorised deletion / masking.
Nothing here imports DeepSpeed.
"""
