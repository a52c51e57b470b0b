"""`seq2vae shard` on the files the references distribute: Optimus' one-sentence-per-line SNLI / PTB /
Yahoo files, Yelp's `label<TAB>text` (the label kept as metadata, never text), and a locally saved
Hugging Face dataset by split, each into train / valid / test shards kept apart."""

from __future__ import annotations

import pytest

from seq2vae.data.cli import main as shard_main
from seq2vae.data.shards import load_meta
from seq2vae.data.sources import InputError, split_suffix
from seq2vae.data.stream import read_split

SNLI = {
    "train": ["a man is playing a guitar .", "two dogs run in the snow .", "a woman reads a book ."],
    "valid": ["a child is eating an apple ."],
    "test": ["people are waiting for a bus .", "the cat sleeps ."],
}
YELP = {
    "train": ["1\tthe food was cold and the service slow .", "4\tgreat tacos , friendly staff .", "0\tnever again ."],
    "valid": ["3\tdecent coffee ."],
    "test": ["2\tok but overpriced .", "4\tloved it ."],
}


def write_splits(directory, lines_by_split) -> dict[str, str]:
    directory.mkdir()
    paths = {}
    for split, lines in lines_by_split.items():
        path = directory / f"{split}.txt"
        path.write_text("\n".join(lines) + "\n")
        paths[split] = str(path)
    return paths


def shard(paths: dict[str, str], output, tokenizer_dir, *extra: str) -> int:
    return shard_main([paths["train"], "--valid", paths["valid"], "--test", paths["test"], "--output", str(output),
                       "--tokenizer", str(tokenizer_dir), "--quiet", *extra])


def texts_and_meta(directory, split):
    samples = list(read_split(directory, split))
    return [s["text"] for s in samples], [s.get("meta") or {} for s in samples]


def test_optimus_plain_files_shard_into_three_splits(tmp_path, tokenizer_dir):
    paths = write_splits(tmp_path / "snli_data", SNLI)
    assert shard(paths, tmp_path / "shards", tokenizer_dir) == 0
    meta = load_meta(tmp_path / "shards")
    assert ({split: meta["splits"][split]["num_samples"] for split in ("train", "valid", "test")}
            == {"train": 3, "valid": 1, "test": 2})
    for split, lines in SNLI.items():
        assert texts_and_meta(tmp_path / "shards", split)[0] == lines  # file order, nothing crosses splits
    assert meta["settings"]["test_inputs"] == [paths["test"]]


def test_yelp_labels_become_metadata_not_text(tmp_path, tokenizer_dir):
    paths = write_splits(tmp_path / "yelp_data", YELP)
    assert shard(paths, tmp_path / "shards", tokenizer_dir, "--format", "labeled") == 0
    for split, lines in YELP.items():
        texts, metas = texts_and_meta(tmp_path / "shards", split)
        assert texts == [line.split("\t", 1)[1] for line in lines]
        assert [m["label"] for m in metas] == [line.split("\t", 1)[0] for line in lines]


def test_labeled_lines_without_a_tab_are_counted_or_refused(tmp_path, tokenizer_dir):
    path = tmp_path / "yelp.txt"
    path.write_text("1\tfine food .\nno tab here\n2\t \n")
    assert shard_main([str(path), "--format", "labeled", "--output", str(tmp_path / "out"), "--tokenizer", str(tokenizer_dir),
                       "--quiet"]) == 0
    counts = load_meta(tmp_path / "out")["counts"]
    assert counts["missing_field"] == 1 and counts["empty"] == 1 and counts["written"] == 1
    with pytest.raises(InputError, match=r"yelp.txt:2: no tab"):
        from seq2vae.data.shards import write_shards

        write_shards([str(path)], tmp_path / "strict", str(tokenizer_dir), input_format="labeled", strict=True, progress=False)


def test_saved_hf_dataset_splits_go_to_their_own_shards(tmp_path, tokenizer_dir):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "snli_hf"
    datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"premise": lines, "label": list(range(len(lines)))})
        for name, lines in (("train", SNLI["train"]), ("validation", SNLI["valid"]), ("test", SNLI["test"]))
    }).save_to_disk(str(saved))
    assert split_suffix(f"{saved}:test") == (str(saved), "test") and split_suffix("corpus.txt") == ("corpus.txt", None)
    paths = {"train": f"{saved}:train", "valid": f"{saved}:validation", "test": f"{saved}:test"}
    assert shard(paths, tmp_path / "shards", tokenizer_dir, "--text-field", "premise") == 0
    for split, lines in SNLI.items():
        texts, metas = texts_and_meta(tmp_path / "shards", split)
        assert texts == lines and [m["label"] for m in metas] == list(range(len(lines)))
