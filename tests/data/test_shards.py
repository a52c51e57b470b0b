from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from seq2vae.data.shards import MetaError, load_meta, write_shards
from seq2vae.data.sources import InputError
from seq2vae.data.stream import read_split

GOOD = [f"The chef number {i} cooks the lovely soup." for i in range(20)]


def shard_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_text_input_skips_and_counts_bad_lines(tmp_path, tokenizer_dir, caplog):
    path = tmp_path / "corpus.txt"
    path.write_bytes(
        b"\n".join(line.encode() for line in GOOD[:2])
        + b"\n\n"  # line 3: empty
        + b"caf\xe9 au lait\n"  # line 4: latin-1, not UTF-8
        + b"   \r\n"  # line 5: blank with CRLF
        + "na\u00efve caf\u00e9\r\n".encode()  # line 6: fine, CRLF stripped
    )
    with caplog.at_level(logging.WARNING):
        meta = write_shards([str(path)], tmp_path / "out", str(tokenizer_dir), progress=False)
    counts = meta["counts"]
    assert counts == {
        "lines_read": 6, "empty": 2, "undecodable": 1, "invalid_json": 0, "missing_field": 0, "written": 3, "truncated": 0,
    }
    assert f"{path}:3" in caplog.text and f"{path}:4" in caplog.text and "UTF-8" in caplog.text
    texts = [sample["text"] for sample in read_split(tmp_path / "out", "train")]
    assert texts == GOOD[:2] + ["na\u00efve caf\u00e9"]


def test_jsonl_metadata_and_bad_records(tmp_path, tokenizer_dir, caplog):
    path = tmp_path / "corpus.jsonl"
    lines = [
        json.dumps({"text": GOOD[0], "topic": "food", "score": 3}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"body": GOOD[1]}),
        json.dumps({"text": 17}),
        json.dumps({"text": GOOD[2]}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        meta = write_shards([str(path)], tmp_path / "out", str(tokenizer_dir), progress=False)
    assert meta["counts"]["invalid_json"] == 2 and meta["counts"]["missing_field"] == 2
    assert meta["counts"]["written"] == 2 and meta["counts"]["lines_read"] == 6
    for line in (2, 3, 4, 5):
        assert f"{path}:{line}" in caplog.text
    samples = list(read_split(tmp_path / "out", "train"))
    assert [s["meta"] for s in samples] == [{"topic": "food", "score": 3}, {}]
    assert [s["text"] for s in samples] == [GOOD[0], GOOD[2]]
    assert samples[0]["input_ids"].dtype == np.int32


@pytest.mark.parametrize(
    "content, reason",
    [(b"fine line\n\xff\xfe\n", "UTF-8"), (b'{"text": "ok"}\n{broken\n', "not JSON"),
     (b'{"text": "ok"}\n{"other": 1}\n', "lacks field 'text'")],
)
def test_strict_stops_at_the_bad_line_and_writes_no_meta(tmp_path, tokenizer_dir, content, reason):
    path = tmp_path / ("corpus.txt" if content.startswith(b"fine") else "corpus.jsonl")
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"{path}:2: .*{reason}"):
        write_shards([str(path)], tmp_path / "out", str(tokenizer_dir), strict=True, progress=False)
    assert not (tmp_path / "out").exists()  # no meta.json, and no empty directory the failed run created


def test_interrupted_run_leaves_only_complete_shards_and_no_meta(tmp_path, tokenizer_dir):
    path = tmp_path / "corpus.txt"
    # Lines are read and tokenised in chunks of 512: the bad line 1101 is met after 1024 samples were written.
    path.write_bytes("\n".join(GOOD[i % 20] for i in range(1100)).encode() + b"\n\xff\n")
    with pytest.raises(InputError, match=f"{path}:1101"):
        write_shards([str(path)], tmp_path / "out", str(tokenizer_dir), shard_size=500, strict=True, progress=False)
    # Two complete shards were renamed; the half-written third was removed; meta.json (the completion mark) absent.
    assert shard_files(tmp_path / "out") == ["train-000000.tar", "train-000001.tar"]
    with pytest.raises(MetaError, match="meta.json not found"):
        load_meta(tmp_path / "out")
    with pytest.raises(InputError, match="--overwrite"):
        write_shards([str(path)], tmp_path / "out", str(tokenizer_dir), progress=False)


def test_gzip_inputs_match_plain_ones(tmp_path, tokenizer_dir, corpus_jsonl):
    packed = tmp_path / "corpus.jsonl.gz"
    packed.write_bytes(gzip.compress(corpus_jsonl.read_bytes()))
    plain = write_shards([str(corpus_jsonl)], tmp_path / "plain", str(tokenizer_dir), shard_size=300, progress=False)
    zipped = write_shards([str(packed)], tmp_path / "zipped", str(tokenizer_dir), shard_size=300, progress=False)
    assert plain["splits"] == zipped["splits"]
    for name in shard_files(tmp_path / "plain"):
        if name.endswith(".tar"):
            assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "zipped" / name).read_bytes()


def test_parallel_tokenisation_writes_identical_shards(tmp_path, tokenizer_dir, corpus_jsonl):
    serial = write_shards(
        [str(corpus_jsonl)], tmp_path / "one", str(tokenizer_dir), shard_size=256, valid_fraction=0.1, progress=False
    )
    parallel = write_shards(
        [str(corpus_jsonl)], tmp_path / "two", str(tokenizer_dir), shard_size=256, valid_fraction=0.1, workers=2, progress=False
    )
    assert serial["splits"] == parallel["splits"] and serial["counts"] == parallel["counts"]
    assert serial["settings_checksum"] == parallel["settings_checksum"]
    for name in shard_files(tmp_path / "one"):
        if name.endswith(".tar"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_meta_and_samples(shard_dir, tokenizer):
    meta = load_meta(shard_dir)
    splits = meta["splits"]
    assert splits["train"]["num_samples"] + splits["valid"]["num_samples"] == meta["counts"]["written"] == 1200
    assert 60 < splits["valid"]["num_samples"] < 180  # valid fraction 0.1
    assert [s["num_samples"] for s in splits["train"]["shards"]][:-1] == [100] * (len(splits["train"]["shards"]) - 1)
    assert meta["tokenizer"]["vocab_size"] == len(tokenizer) and meta["tokenizer"]["eos_token_id"] == 1
    assert len(meta["settings_checksum"]) == 64 and meta["max_length"] == 64
    assert not [p for p in shard_dir.iterdir() if p.name.endswith(".tmp")]
    samples = list(read_split(shard_dir, "valid"))
    assert len(samples) == splits["valid"]["num_samples"]
    assert len({s["key"] for s in samples}) == len(samples)
    for sample in samples[:50]:
        assert sample["input_ids"][-1] == tokenizer.eos_token_id
        assert sample["input_ids"].tolist() == tokenizer(sample["text"])["input_ids"]
        assert set(sample["meta"]) == {"topic", "sentiment", "tense", "length"}


def test_truncation_keeps_eos_and_is_counted(tmp_path, tokenizer_dir, tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(GOOD[:4] + ["short."]) + "\n")
    meta = write_shards([str(path)], tmp_path / "out", str(tokenizer_dir), max_length=6, progress=False)
    samples = list(read_split(tmp_path / "out", "train"))
    long_ones = sum(len(tokenizer(text)["input_ids"]) > 6 for text in GOOD[:4] + ["short."])
    assert meta["counts"]["truncated"] == long_ones == 4
    assert all(len(s["input_ids"]) <= 6 and s["input_ids"][-1] == tokenizer.eos_token_id for s in samples)


def test_hf_dataset_directory_and_valid_inputs(tmp_path, tokenizer_dir):
    import datasets

    datasets.Dataset.from_dict({"sentence": GOOD[:10], "label": list(range(10))}).save_to_disk(tmp_path / "hf")
    dict_dir = tmp_path / "hf_dict"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"sentence": GOOD[10:13]})}).save_to_disk(dict_dir)
    with pytest.raises(InputError, match="--split"):
        write_shards([str(tmp_path / "hf")], tmp_path / "bad", str(tokenizer_dir), valid_inputs=[str(dict_dir)],
                     text_field="sentence", progress=False)
    meta = write_shards(
        [str(tmp_path / "hf")], tmp_path / "out", str(tokenizer_dir), valid_inputs=[str(dict_dir)],
        text_field="sentence", hf_split="test", overwrite=True, progress=False,
    )
    train = list(read_split(tmp_path / "out", "train"))
    assert [s["text"] for s in train] == GOOD[:10] and [s["meta"]["label"] for s in train] == list(range(10))
    assert [s["text"] for s in read_split(tmp_path / "out", "valid")] == GOOD[10:13]
    assert meta["splits"]["valid"]["num_samples"] == 3


def test_cli_writes_shards_and_reports_errors(tmp_path, tokenizer_dir):
    corpus, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    corpus.write_text("\n".join(GOOD[:15]) + "\n")
    valid.write_text("\n".join(GOOD[15:]) + "\n")
    command = [sys.executable, "-m", "seq2vae", "shard", str(corpus), "--valid", str(valid), "--output", str(tmp_path / "out"),
               "--tokenizer", str(tokenizer_dir), "--shard-size", "4", "--quiet"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "wrote 15 train / 5 valid / 0 test samples" in done.stdout
    meta = load_meta(tmp_path / "out")
    assert [s["num_samples"] for s in meta["splits"]["train"]["shards"]] == [4, 4, 4, 3]
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 2 and "already holds shards" in again.stderr
    missing = subprocess.run(command[:4] + [str(tmp_path / "nope.txt")] + command[5:], capture_output=True, text=True,
                             timeout=120, env=env)
    assert missing.returncode == 2 and "nope.txt" in missing.stderr


def test_load_meta_errors_name_the_file(tmp_path):
    with pytest.raises(MetaError, match=str(tmp_path / "meta.json")):
        load_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{oops")
    with pytest.raises(MetaError, match="not valid JSON"):
        load_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "seq2vae-shards"}))
    with pytest.raises(MetaError, match="missing keys"):
        load_meta(tmp_path)


def test_tar_members_are_what_tarfile_writes():
    import io
    import tarfile

    from seq2vae.data.shards import encode_sample, tar_members

    sample = encode_sample("train_0000000042", np.array([5, 6, 1]), "caf\u00e9 text", {"topic": "food"})
    archive = tar_members(sample) + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {info.name: tar.extractfile(info).read() for info in tar}
    assert members == {f"train_0000000042.{suffix}": sample[suffix] for suffix in ("input_ids.npy", "meta.json", "text.txt")}
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for suffix in ("input_ids.npy", "meta.json", "text.txt"):
            info = tarfile.TarInfo(f"train_0000000042.{suffix}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(sample[suffix]), 0, 0o444, "seq2vae", "seq2vae"
            tar.addfile(info, io.BytesIO(sample[suffix]))
    assert reference.getvalue().startswith(tar_members(sample))


def test_field_messages_say_what_is_wrong(tmp_path, tokenizer_dir, caplog):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join([json.dumps({"text": 17}), json.dumps({}), json.dumps({"body": "x"}),
                               json.dumps({"text": GOOD[0]})]) + "\n")
    with caplog.at_level(logging.WARNING):
        write_shards([str(path)], tmp_path / "out", str(tokenizer_dir), progress=False)
    assert f"{path}:1: field 'text' holds a int, not a string" in caplog.text
    assert f"{path}:2: lacks field 'text': the object is empty" in caplog.text
    assert f"{path}:3: lacks field 'text'; its fields: 'body'" in caplog.text
    assert "fields: []" not in caplog.text


def test_a_damaged_tar_header_is_corrupt_and_a_cut_file_truncated(shard_dir, tmp_path):
    import shutil
    import tarfile

    from seq2vae.data.stream import ShardError

    with tarfile.open(shard_dir / "train-000000.tar") as archive:
        middle = archive.getmembers()[30].offset  # a member header in the middle of the shard
    for damage, expected in (("header", f"corrupt shard .*bad tar header at byte {middle}"), ("cut", "truncated shard")):
        copy = tmp_path / damage
        shutil.copytree(shard_dir, copy)
        shard = copy / "train-000000.tar"
        data = bytearray(shard.read_bytes())
        if damage == "header":
            data[middle + 148 : middle + 156] = b"garbage!"  # its checksum field
        else:
            del data[middle:]  # cut at that member boundary: a clean end, fewer samples
        shard.write_bytes(bytes(data))
        with pytest.raises(ShardError, match=expected):
            list(read_split(copy, "train"))


def test_encode_ids_is_byte_for_byte_np_save():
    import io

    import numpy as np

    from seq2vae.data.shards import decode_ids, encode_ids

    generator = np.random.default_rng(0)
    for length in (1, 7, 7, 31, 300, 5000):
        ids = generator.integers(0, 32000, size=length)  # int64 in: stored as int32, as before
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(ids, dtype=np.int32), allow_pickle=False)
        assert encode_ids(ids) == buffer.getvalue()
        assert np.array_equal(decode_ids(encode_ids(ids)), ids)
    strided = np.arange(20, dtype=np.int32)[::2]  # a non-contiguous view
    assert np.array_equal(decode_ids(encode_ids(strided)), strided)


def test_ustar_headers_are_what_tarfile_writes():
    import tarfile

    from seq2vae.data.shards import _ustar_header

    for name, size in (("train_0000000000.input_ids.npy", 168), ("valid_0000000042.text", 0), ("x" * 100, 2**33 - 1)):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "seq2vae", "seq2vae"
        assert _ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
