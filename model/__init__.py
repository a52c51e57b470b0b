"""The text VAE: any pretrained seq2seq backbone (T5, Flan-T5, mT5, BART) with a Gaussian latent."""

from seq2vae.model.build import build_vae
from seq2vae.model.config import VAEConfig
from seq2vae.model.objective import gaussian_kl_per_dim, vae_loss
from seq2vae.model.vae import Seq2SeqVAE, VAEOutput

__all__ = ["Seq2SeqVAE", "VAEConfig", "VAEOutput", "build_vae", "gaussian_kl_per_dim", "vae_loss"]
