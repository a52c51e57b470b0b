"""seq2vae: pretrained seq2seq Transformers turned into text VAEs by finetuning."""

__version__ = "0.1.0"
