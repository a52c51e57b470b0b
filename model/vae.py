"""Seq2SeqVAE: a pretrained encoder-decoder turned into a text VAE.

    x -> encoder -> pool -> (mu, logvar) -> z ~ N(mu, exp(logvar)) -> decoder -> x

The decoder sees the encoder only through z: its cross-attention memory is z projected to M
pseudo-encoder states (`memory` injection), or a constant when only `embedding` injection (z projected
and added to every decoder input embedding) is used; with `prefix` injection z becomes one
self-attention key/value slot per decoder layer and cross-attention is switched off (model/prefix.py).
The encoder's token states never reach the decoder, so nothing but z can carry information about x.

Single-device code: no DeepSpeed here. Under ZeRO-3 the trainer builds this module inside
`deepspeed.zero.Init`; every parameter is used inside its own module's forward (embeddings are looked
up by calling the embedding module), so no external-parameter registration is needed.

Shape legend: B batch, S source length, T target length, D model width, Z latent, K samples, M memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .backbone import backbone_from_config, head_is_untied, pretrained_backbone
from .config import VAEConfig, with_dropout, with_fused_activation
from .invariants import check_model
from .objective import gaussian_kl_per_dim
from .pooling import Pooler
from .precision import Float32Linear
from .prefix import PrefixInjection

FORMAT_VERSION = 1
BACKBONE_SUBDIR = "backbone"
HEADS_FILE = "vae_heads.safetensors"
CONFIG_FILE = "vae_config.json"
PARAMETER_GROUPS = ("embeddings", "encoder", "decoder", "posterior", "latent")


# Formats torch / transformers would read with pickle; a model directory must not contain them.
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def refuse_pickled_weights(directory: Path) -> None:
    """Raises ValueError naming any pickle-format weight file in a model directory (or its backbone)."""
    for folder in (directory, directory / BACKBONE_SUBDIR):
        pickled = sorted(p.name for p in folder.glob("*") if p.name.endswith(PICKLED_WEIGHT_SUFFIXES)) if folder.is_dir() else []
        if pickled:
            raise ValueError(
                f"{folder} contains {', '.join(pickled)}: pickle-format weights are refused because loading "
                "them can run code; seq2vae model directories hold safetensors only (re-export the model)"
            )


def saved_vae_config(directory: Path) -> VAEConfig:
    """The VAEConfig of a `save_pretrained` directory, read without loading any weights."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} is not a seq2vae model directory: {CONFIG_FILE} is missing")
    record = json.loads(config_path.read_text())
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: unsupported format_version {record.get('format_version')!r}")
    return VAEConfig.from_dict(record["vae"], source=str(config_path))


def saved_tokenizer(directory: Path):
    """The tokenizer `save_pretrained` wrote beside the model, or None when it had none."""
    return AutoTokenizer.from_pretrained(directory) if (directory / "tokenizer_config.json").exists() else None


@dataclass
class VAEOutput:
    recon_nll: torch.Tensor  # [B] -log p(x|z), summed over target tokens (EOS included, padding excluded)
    kl: torch.Tensor  # [B] analytic KL(q(z|x) || N(0, I))
    kl_per_dim: torch.Tensor  # [B,Z]
    mu: torch.Tensor  # [B,Z]
    logvar: torch.Tensor  # [B,Z]
    z: torch.Tensor  # [B,Z]
    logits: torch.Tensor  # [B,T,V]
    num_tokens: torch.Tensor  # [B] predicted target tokens per sentence


class Seq2SeqVAE(nn.Module):
    def __init__(self, backbone: PreTrainedModel, config: VAEConfig, tokenizer=None):
        super().__init__()
        if not backbone.config.is_encoder_decoder:
            raise ValueError(f"backbone {config.backbone!r} is not an encoder-decoder model")
        self.backbone = backbone
        self.config = config
        self.tokenizer = tokenizer
        width = backbone.config.d_model
        self.pooler = Pooler(config.pooling, width, include_padding=config.reference_compat.pool_padding)
        # The latent side runs in fp32 under bf16 (model/precision.py): mu, logvar, z, the KL, the projections.
        self.posterior = Float32Linear(width, 2 * config.latent_dim)  # -> (mu, logvar)
        self.latent_to_memory = (
            Float32Linear(config.latent_dim, config.memory_states * width)
            if config.injection in ("memory", "both")
            else None
        )
        self.latent_to_embedding = (
            Float32Linear(config.latent_dim, width)
            if config.injection in ("embedding", "both", "prefix_embedding")
            else None
        )
        self.latent_to_prefix = (
            PrefixInjection(config.latent_dim, backbone.config, config.reference_compat.prefix_reshape)
            if config.injection.startswith("prefix")
            else None
        )
        if config.gradient_checkpointing:
            # transformers 5 renamed gradient to activation checkpointing; older releases lack the new name.
            if hasattr(backbone, "activation_checkpointing_enable"):
                backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.latent_to_prefix is not None:
                self.latent_to_prefix.allow_checkpointed_layers(backbone.get_decoder())
        # Generation's decoder-input shift (embedding injection), set only inside `_shifted_embeddings`.
        self._generation_shift: torch.Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, name_or_path: str, tokenizer: str | None = None, **vae_settings) -> "Seq2SeqVAE":
        """Loads pretrained backbone weights (hub name on a cluster, local directory anywhere)."""
        config = VAEConfig(backbone=name_or_path, tokenizer=tokenizer, **vae_settings)
        backbone_config = with_fused_activation(with_dropout(AutoConfig.from_pretrained(name_or_path), config.dropout))
        backbone = pretrained_backbone(name_or_path, backbone_config)  # LM head as the checkpoint has it
        return cls(backbone, config, AutoTokenizer.from_pretrained(tokenizer or name_or_path))

    @classmethod
    def from_config(
        cls,
        backbone_config: PretrainedConfig,
        tokenizer=None,
        config: VAEConfig | None = None,
        untied_head: bool | None = None,
        **vae_settings,
    ) -> "Seq2SeqVAE":
        """Builds a randomly initialised backbone from `backbone_config` (tests, debug runs, and the
        architecture that checkpoints are loaded into).

        `untied_head`: whether the LM head is its own tensor; None takes what the config declares
        (`model.backbone.head_is_untied`; transformers 5 alone would tie every T5).
        """
        if config is None:
            config = VAEConfig(backbone=f"config:{backbone_config.model_type}", **vae_settings)
        if untied_head is None:
            untied_head = head_is_untied(backbone_config)
        return cls(backbone_from_config(backbone_config, untied_head), config, tokenizer)

    # ------------------------------------------------------------------ parameter groups
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter in exactly one named group, for per-phase freezing.

        `embeddings` is the token embedding table, which T5 and BART share between encoder input,
        decoder input (and, when tied, the LM head); it is its own group so that freezing the decoder
        does not silently freeze what the encoder reads. `decoder` holds the decoder blocks, their
        norms and position embeddings, and an untied LM head.
        """
        embedding_ids = {id(self.backbone.get_input_embeddings().weight)}
        encoder_ids = {id(p) for p in self.backbone.get_encoder().parameters()} - embedding_ids
        groups: dict[str, list[nn.Parameter]] = {name: [] for name in PARAMETER_GROUPS}
        seen: set[int] = set()
        for module_name, module in (
            ("posterior", self.pooler),
            ("posterior", self.posterior),
            ("latent", self.latent_to_memory),
            ("latent", self.latent_to_embedding),
            ("latent", self.latent_to_prefix),
        ):
            if module is not None:
                groups[module_name] += list(module.parameters())
                seen |= {id(p) for p in module.parameters()}
        for parameter in self.backbone.parameters():  # parameters() yields tied weights once
            if id(parameter) in embedding_ids:
                groups["embeddings"].append(parameter)
            elif id(parameter) in encoder_ids:
                groups["encoder"].append(parameter)
            else:  # decoder stack, LM head when untied, BART's final-logits bias is a buffer
                groups["decoder"].append(parameter)
            seen.add(id(parameter))
        assert seen == {id(p) for p in self.parameters()}, "a parameter is missing from parameter_groups"
        return groups

    # ------------------------------------------------------------------ encoder side
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask [B,S] -> mu, logvar [B,Z] (fp32 whatever the backbone's dtype)."""
        hidden = self.backbone.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.pooler(hidden, attention_mask)  # [B,D]
        mu, logvar = self.posterior(pooled).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * noise, in fp32: under bf16 a small sigma next to mu ~ 1 would round away."""
        mu, logvar = mu.float(), logvar.float()
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * noise

    # ------------------------------------------------------------------ decoder side
    def _memory(self, z: torch.Tensor) -> tuple[BaseModelOutput, torch.Tensor]:
        """z [B,Z] -> the decoder's cross-attention memory [B,M,D] and its all-ones mask [B,M]."""
        width = self.backbone.config.d_model
        if self.latent_to_memory is not None:
            memory = self.latent_to_memory(z).view(z.shape[0], self.config.memory_states, width).to(self._backbone_dtype)
        else:
            # Embedding-only injection: one constant memory state, so cross-attention carries nothing.
            # Prefix injection: the backbone's forward wants encoder states, but the prefix hook
            # drops them before the decoder runs.
            memory = z.new_zeros(z.shape[0], 1, width, dtype=self._backbone_dtype)
        mask = torch.ones(memory.shape[:2], dtype=torch.long, device=z.device)
        return BaseModelOutput(last_hidden_state=memory), mask

    @property
    def _backbone_dtype(self) -> torch.dtype:
        return self.backbone.get_input_embeddings().weight.dtype

    def _decoder_embeddings(self, decoder_input_ids: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Decoder input embeddings [B,T,D] with z's projection added to every position."""
        embeddings = self.backbone.get_decoder().embed_tokens(decoder_input_ids)  # BART scales inside
        return embeddings + self.latent_to_embedding(z).unsqueeze(1).to(embeddings.dtype)

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoding: z [B,Z], labels [B,T] (-100 on padding) -> logits [B,T,V]."""
        decoder_input_ids = self.backbone.prepare_decoder_input_ids_from_labels(labels=labels)
        encoder_outputs, memory_mask = self._memory(z)
        inputs = {"encoder_outputs": encoder_outputs, "attention_mask": memory_mask, "use_cache": False}
        if self.latent_to_embedding is not None:
            inputs["decoder_inputs_embeds"] = self._decoder_embeddings(decoder_input_ids, z)
        else:
            inputs["decoder_input_ids"] = decoder_input_ids
        with self._prefix_attached(z):
            return self.backbone(**inputs).logits

    def _prefix_attached(self, z: torch.Tensor):
        """Context in which decoder calls see z's key/value prefix (prefix injection; else a no-op)."""
        if self.latent_to_prefix is None:
            return contextlib.nullcontext()
        return self.latent_to_prefix.attached(self.backbone.get_decoder(), z, self._backbone_dtype)

    @staticmethod
    def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits [B,T,V], labels [B,T] -> -log p(x|z) [B], summed over non-padding targets (in fp32)."""
        # Flattened [B*T,V] rows: the same values as the [B,V,T] layout, and 1.3-2.6x faster on CPU.
        token_nll = F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none"
        )
        return token_nll.view(labels.shape).sum(-1)

    # ------------------------------------------------------------------ the VAE
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        sample: bool = True,
    ) -> VAEOutput:
        """One VAE pass: encode, draw z ~ q(z|x) (or take z = mu with sample=False), decode labels."""
        mu, logvar = self.encode(input_ids, attention_mask)
        z = self.reparameterize(mu, logvar) if sample else mu
        logits = self.decode_logits(z, labels)
        kl_per_dim = gaussian_kl_per_dim(mu, logvar)
        return VAEOutput(
            recon_nll=self.sequence_nll(logits, labels),
            kl=kl_per_dim.sum(-1),
            kl_per_dim=kl_per_dim,
            mu=mu,
            logvar=logvar,
            z=z,
            logits=logits,
            num_tokens=(labels != -100).sum(-1),
        )

    def log_likelihood(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for many z per sentence in one decoder call.

        Args:
            z: [B,K,Z] (K samples per sentence) or [B,Z].
            labels: [B,T] targets, -100 on padding.
        Returns:
            [B,K] (or [B]) log-likelihoods summed over target tokens.
        """
        if z.dim() == 2:
            return self.log_likelihood(z.unsqueeze(1), labels).squeeze(1)
        batch, num_samples, latent = z.shape
        flat_labels = labels.repeat_interleave(num_samples, dim=0)  # [B*K,T], sentence-major like z
        logits = self.decode_logits(z.reshape(batch * num_samples, latent), flat_labels)
        return -self.sequence_nll(logits, flat_labels).view(batch, num_samples)

    # ------------------------------------------------------------------ generation
    @contextlib.contextmanager
    def _shifted_embeddings(self, z: torch.Tensor):
        """While generating, adds z's embedding projection to every decoder input embedding.

        `generate` looks embeddings up itself, so the shift is applied by a forward hook on the
        decoder's embedding module; the hook expands the shift to beams / returned sequences.
        """
        if self.latent_to_embedding is None:
            yield
            return
        shift = self.latent_to_embedding(z)  # [B,D]

        def add_shift(module, inputs, output):
            repeats = output.shape[0] // shift.shape[0]
            return output + shift.repeat_interleave(repeats, dim=0).unsqueeze(1).to(output.dtype)

        handle = self.backbone.get_decoder().embed_tokens.register_forward_hook(add_shift)
        try:
            yield
        finally:
            handle.remove()

    @torch.no_grad()
    def generate(self, z: torch.Tensor, max_new_tokens: int = 64, **generate_kwargs) -> torch.Tensor:
        """Decodes token ids from z [B,Z]: greedy by default; `do_sample=True`, `num_beams=N`,
        `top_p`, `temperature`, `synced_gpus` (ZeRO-3) ... are passed to Hugging Face `generate`."""
        encoder_outputs, memory_mask = self._memory(z)
        with self._shifted_embeddings(z), self._prefix_attached(z):
            return self.backbone.generate(
                encoder_outputs=encoder_outputs,
                attention_mask=memory_mask,
                max_new_tokens=max_new_tokens,
                **generate_kwargs,
            )

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this Seq2SeqVAE has no tokenizer; pass one to from_config or load a saved model")
        return self.tokenizer

    def _decode_text(self, z: torch.Tensor, **generate_kwargs) -> list[str]:
        ids = self.generate(z, **generate_kwargs)
        return self._require_tokenizer().batch_decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> mu, logvar [N,Z]."""
        batch = self._require_tokenizer()(texts, padding=True, truncation=True, return_tensors="pt")
        device = next(self.parameters()).device
        return self.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))

    @torch.no_grad()
    def reconstruct(self, texts: list[str], **generate_kwargs) -> list[str]:
        """Decodes each text from its posterior mean."""
        mu, _ = self.encode_text(texts)
        return self._decode_text(mu, **generate_kwargs)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, prior=None, **generate_kwargs) -> list[str]:
        """Decodes `num_samples` codes drawn from `prior` (`seq2vae.model.prior`: a learned one), N(0, I) when None."""
        parameter = next(self.parameters())
        if prior is None:
            z = torch.randn(num_samples, self.config.latent_dim, generator=generator)
        else:
            z = prior.sample(num_samples, generator)
        z = z.to(parameter.device, parameter.dtype)
        return self._decode_text(z, **generate_kwargs)

    @torch.no_grad()
    def interpolate(self, text_a: str, text_b: str, steps: int = 5, **generate_kwargs) -> list[str]:
        """Decodes `steps` evenly spaced points on the line between the two posterior means."""
        mu, _ = self.encode_text([text_a, text_b])
        weights = torch.linspace(0, 1, steps, device=mu.device, dtype=mu.dtype).unsqueeze(1)  # [steps,1]
        return self._decode_text((1 - weights) * mu[0] + weights * mu[1], **generate_kwargs)

    # ------------------------------------------------------------------ persistence
    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        """The VAE's own parameters (everything outside the backbone)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save_pretrained(self, directory: str | Path, max_shard_size: str | int = "5GB") -> Path:
        """Writes backbone weights, VAE heads, vae_config.json and tokenizer into one directory.

        Safetensors only (loading never unpickles). Written to a temporary sibling and renamed, so an
        interrupted save never leaves a directory that looks complete.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            # Larger backbones are split into shards of at most max_shard_size plus an index json.
            self.backbone.save_pretrained(staging / BACKBONE_SUBDIR, safe_serialization=True, max_shard_size=max_shard_size)
            if not (staging / BACKBONE_SUBDIR / "config.json").is_file():
                # transformers 5 writes nothing on a rank other than 0 once torch.distributed is up.
                raise RuntimeError(
                    f"saving {directory}: the backbone was not written (transformers saves on global rank 0 "
                    "only while torch.distributed is initialised); call save_pretrained on rank 0"
                )
            save_file({k: v.detach().contiguous().cpu() for k, v in self.heads_state_dict().items()}, staging / HEADS_FILE)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(staging)
            record = {"format_version": FORMAT_VERSION, "vae": self.config.to_dict()}
            (staging / CONFIG_FILE).write_text(json.dumps(record, indent=2))
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        **backbone_kwargs) -> "Seq2SeqVAE":
        """Loads a directory written by `save_pretrained`; never unpickles (pickle-format weights are refused).

        `device`: where the model goes before the build-time checks run, so the z check's forward pass
        runs there (for an 11B model, a GPU forward instead of a CPU one); None keeps it on the CPU.
        """
        directory = Path(directory)
        config = saved_vae_config(directory)
        refuse_pickled_weights(directory)
        backbone_dir = directory / BACKBONE_SUBDIR
        backbone_config = AutoConfig.from_pretrained(backbone_dir)
        backbone = pretrained_backbone(backbone_dir, backbone_config, **{"use_safetensors": True, **backbone_kwargs})
        vae = cls(backbone, config, saved_tokenizer(directory))
        heads = load_file(directory / HEADS_FILE)
        missing, unexpected = vae.load_state_dict(heads, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"{directory / HEADS_FILE}: missing {missing}, unexpected {unexpected}")
        vae = vae.to(device=device, dtype=backbone.dtype).eval()  # eval(): as transformers' from_pretrained
        check_model(vae)
        return vae
