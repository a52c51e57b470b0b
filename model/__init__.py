"""The text VAE: any pretrained seq2seq backbone (T5, Flan-T5, mT5, BART) with a Gaussian latent."""

from .build import build_vae
from .config import VAEConfig
from .objective import gaussian_kl_per_dim, vae_loss
from .vae import Seq2SeqVAE, VAEOutput

__all__ = ["Seq2SeqVAE", "VAEConfig", "VAEOutput", "build_vae", "gaussian_kl_per_dim", "vae_loss"]
