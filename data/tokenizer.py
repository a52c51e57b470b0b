"""Train a small subword tokenizer offline, for machines without hub access (tests, the quickstart).

The result is a Hugging Face fast tokenizer directory that `AutoTokenizer.from_pretrained(path)` loads,
with T5's conventions: `<pad>` = 0 (also the decoder start token), `</s>` = 1 appended to every
sequence, `<unk>` = 2, plus `<mask>` = 3 for input masking. Byte-pair merges over metaspace words
(T5's SentencePiece marks word starts with "▁" the same way), so decoding restores the spaces.

BPE, not T5's Unigram: on the synthetic corpus, `tokenizers`' UnigramTrainer stops at 881 pieces
whatever size is asked and cuts frequent words ("▁poo" "r", "▁be" "c" "a" "use"): 36 tokens per
sentence of 15 words, where BPE's 1,000 merges give 18. Half the length is half the compute, and a
decoder that emits whole words learns to reconstruct them far sooner.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<mask>"]


def train_tokenizer(texts: Iterable[str], output_dir: str | Path, vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Trains a Unigram tokenizer on `texts` and saves it to `output_dir`.

    Args:
        texts: the training sentences (streamed; never held in memory as a whole by this function).
        output_dir: where the tokenizer files are written (created if missing).
        vocab_size: target vocabulary size including the special tokens.
    Returns:
        The trained tokenizer, identical to `AutoTokenizer.from_pretrained(output_dir)`.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    # Punctuation is its own token, so "market." and "market" share one word piece.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>"
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(output_dir)
    return wrapped
