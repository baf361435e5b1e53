"""Mapping networks: one image embedding -> `prefix_length` input embeddings for the decoder."""
from __future__ import annotations

import torch
from torch import nn

from memecap.config import MapperConfig


class MLPMapper(nn.Module):
    """ClipCap's MLP: image vector -> hidden -> prefix_length * decoder width, tanh between."""

    def __init__(self, image_dim: int, decoder_dim: int, prefix_length: int, dropout: float = 0.0):
        super().__init__()
        self.prefix_length = prefix_length
        self.decoder_dim = decoder_dim
        out_dim = decoder_dim * prefix_length
        hidden = max(out_dim // 2, decoder_dim)
        self.net = nn.Sequential(
            nn.Linear(image_dim, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, out_dim),
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.net(image_embeds).view(-1, self.prefix_length, self.decoder_dim)


class TokenMLPMapper(nn.Module):
    """Patch features -> one decoder embedding per patch (a two-layer MLP applied to each token)."""

    def __init__(self, image_dim: int, decoder_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(image_dim, decoder_dim), nn.Tanh(), nn.Dropout(dropout),
                                 nn.Linear(decoder_dim, decoder_dim))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.net(image_tokens)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the image vector is expanded to `clip_length` tokens, joined by
    `prefix_length` learned queries, and the queries' outputs after the encoder are the prefix.
    Given patch features instead, each patch is projected to one token in place of the expansion."""

    def __init__(self, image_dim: int, decoder_dim: int, prefix_length: int, clip_length: int,
                 num_layers: int, num_heads: int, dropout: float = 0.0, patches: bool = False):
        super().__init__()
        if decoder_dim % num_heads:
            raise ValueError(f"model.mapper.num_heads={num_heads} must divide the decoder width {decoder_dim}")
        self.prefix_length = prefix_length
        self.clip_length = clip_length
        self.decoder_dim = decoder_dim
        self.patches = patches
        self.expand = nn.Linear(image_dim, decoder_dim if patches else clip_length * decoder_dim)
        self.queries = nn.Parameter(torch.randn(prefix_length, decoder_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(decoder_dim, num_heads, dim_feedforward=2 * decoder_dim,
                                           dropout=dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        if self.patches:
            tokens = self.expand(image_embeds)
        else:
            tokens = self.expand(image_embeds).view(-1, self.clip_length, self.decoder_dim)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        out = self.encoder(torch.cat([tokens, queries], dim=1))
        return out[:, tokens.shape[1]:]


def build_mapper(cfg: MapperConfig, image_dim: int, decoder_dim: int, patches: bool = False) -> nn.Module:
    if cfg.type == "mlp":
        if patches:
            return TokenMLPMapper(image_dim, decoder_dim, cfg.dropout)
        return MLPMapper(image_dim, decoder_dim, cfg.prefix_length, cfg.dropout)
    return TransformerMapper(image_dim, decoder_dim, cfg.prefix_length, cfg.clip_length,
                             cfg.num_layers, cfg.num_heads, cfg.dropout, patches=patches)
