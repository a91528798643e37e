"""SenseVoiceSmall: a SAN-M encoder with four prepended query embeddings and a CTC head.

The parameter names mirror the official checkpoint (``encoder.encoders0.0.self_attn.linear_q_k_v.weight``,
``ctc.ctc_lo.weight``, ``embed.weight``...) so ``model.pt`` loads with a strict key/shape check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .queries import (
    EMOTION_QUERY,
    EVENT_QUERY,
    NUM_QUERY_EMBEDDINGS,
    NUM_QUERY_FRAMES,
    language_row,
    textnorm_row,
)


def query_rows(language_rows: torch.Tensor, textnorm_rows: torch.Tensor) -> torch.Tensor:
    """(B, 4) embedding rows in the order the model was trained on: language, event, emotion, text-norm.

    The one place the four queries are put together: the model, its ONNX export and the parity tests
    all call it. Every row is built from the (B,) inputs, so a traced graph keeps the batch dynamic.
    """
    event_rows = torch.full_like(language_rows, EVENT_QUERY)
    emotion_rows = torch.full_like(language_rows, EMOTION_QUERY)
    return torch.stack([language_rows, event_rows, emotion_rows, textnorm_rows], dim=1)


@dataclass(frozen=True)
class ModelDimensions:
    input_size: int = 560  # n_mels * lfr_m
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50  # 1 input block (input_size -> output_size) + num_blocks - 1
    tp_blocks: int = 20
    kernel_size: int = 11
    sanm_shift: int = 0
    vocab_size: int = 25055

    @classmethod
    def from_config(cls, config: dict, input_size: int, vocab_size: int) -> ModelDimensions:
        """Read the ``encoder_conf`` section of an official ``config.yaml``."""
        conf = config.get("encoder_conf", {})
        return cls(
            input_size=input_size,
            output_size=int(conf.get("output_size", 512)),
            attention_heads=int(conf.get("attention_heads", 4)),
            linear_units=int(conf.get("linear_units", 2048)),
            num_blocks=int(conf.get("num_blocks", 50)),
            tp_blocks=int(conf.get("tp_blocks", 20)),
            kernel_size=int(conf.get("kernel_size", 11)),
            sanm_shift=int(conf.get("sanm_shfit", 0)),
            vocab_size=vocab_size,
        )


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the model dtype, as the reference does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def sinusoidal_positions(length: int, depth: int, device: torch.device) -> torch.Tensor:
    """(length, depth) encoding with positions counted from 1 and [sin | cos] halves, in float32."""
    positions = torch.arange(1, length + 1, device=device, dtype=torch.float32)
    increment = math.log(10000.0) / (depth / 2 - 1)
    inv_timescales = torch.exp(torch.arange(depth // 2, device=device, dtype=torch.float32) * -increment)
    scaled = positions[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class FeedForward(nn.Module):
    def __init__(self, size: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.relu(self.w_1(x)))


class SANMAttention(nn.Module):
    """Multi-head self-attention plus an FSMN memory: a depthwise 1-D convolution over the values."""

    def __init__(self, heads: int, in_size: int, size: int, kernel_size: int, shift: int):
        super().__init__()
        self.heads = heads
        self.head_dim = size // heads
        self.linear_q_k_v = nn.Linear(in_size, size * 3)
        self.linear_out = nn.Linear(size, size)
        self.fsmn_block = nn.Conv1d(size, size, kernel_size, groups=size, bias=False)
        left = (kernel_size - 1) // 2 + shift
        self.padding = (left, kernel_size - 1 - left)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``valid``: (B, T) bool, False on padding frames."""
        batch, frames, _ = x.shape
        q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)

        # Padding must not leak into the convolution window of real frames.
        frame_mask = valid.unsqueeze(-1).to(v.dtype)
        masked_v = v * frame_mask
        memory = self.fsmn_block(F.pad(masked_v.transpose(1, 2), self.padding)).transpose(1, 2)
        memory = (memory + masked_v) * frame_mask

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, frames, self.heads, self.head_dim).transpose(1, 2)

        # Fused attention keeps its softmax accumulation in float32 for half-precision inputs.
        attended = F.scaled_dot_product_attention(
            split_heads(q), split_heads(k), split_heads(v), attn_mask=valid[:, None, None, :]
        )
        attended = attended.transpose(1, 2).reshape(batch, frames, -1)
        return self.linear_out(attended) + memory


class EncoderLayer(nn.Module):
    def __init__(self, in_size: int, dims: ModelDimensions):
        super().__init__()
        size = dims.output_size
        self.self_attn = SANMAttention(dims.attention_heads, in_size, size, dims.kernel_size, dims.sanm_shift)
        self.feed_forward = FeedForward(size, dims.linear_units)
        self.norm1 = LayerNorm(in_size)
        self.norm2 = LayerNorm(size)
        # The first layer changes the width (560 -> 512), so it has no residual around attention.
        self.attention_residual = in_size == size

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        attended = self.self_attn(self.norm1(x), valid)
        x = x + attended if self.attention_residual else attended
        return x + self.feed_forward(self.norm2(x))


class SenseVoiceEncoder(nn.Module):
    def __init__(self, dims: ModelDimensions):
        super().__init__()
        self.scale = dims.output_size**0.5
        self.encoders0 = nn.ModuleList([EncoderLayer(dims.input_size, dims)])
        self.encoders = nn.ModuleList(
            [EncoderLayer(dims.output_size, dims) for _ in range(dims.num_blocks - 1)]
        )
        self.tp_encoders = nn.ModuleList(
            [EncoderLayer(dims.output_size, dims) for _ in range(dims.tp_blocks)]
        )
        self.after_norm = LayerNorm(dims.output_size)
        self.tp_norm = LayerNorm(dims.output_size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        positions = sinusoidal_positions(x.shape[1], x.shape[2], x.device)
        x = (x.float() * self.scale + positions).to(x.dtype)
        for layer in [*self.encoders0, *self.encoders]:
            x = layer(x, valid)
        x = self.after_norm(x)
        for layer in self.tp_encoders:
            x = layer(x, valid)
        return self.tp_norm(x)


class CTCHead(nn.Module):
    def __init__(self, size: int, vocab_size: int):
        super().__init__()
        self.ctc_lo = nn.Linear(size, vocab_size)

    def logits(self, encoded: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits, over the whole vocabulary or only the vocabulary ``rows`` given.

        Computed in float32 even for a half-precision model: greedy decoding compares logits that can be
        closer than half precision resolves.
        """
        weight, bias = self.ctc_lo.weight, self.ctc_lo.bias
        if rows is not None:
            weight, bias = weight[rows], bias[rows]
        return F.linear(encoded.float(), weight.float(), bias.float())

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        """Float32 log-probabilities."""
        return F.log_softmax(self.logits(encoded), dim=-1)


class SenseVoiceSmall(nn.Module):
    def __init__(self, dims: ModelDimensions):
        super().__init__()
        self.dims = dims
        self.embed = nn.Embedding(NUM_QUERY_EMBEDDINGS, dims.input_size)
        self.encoder = SenseVoiceEncoder(dims)
        self.ctc = CTCHead(dims.output_size, dims.vocab_size)

    @torch.inference_mode()
    def encode(
        self,
        features: torch.Tensor | np.ndarray,
        lengths: torch.Tensor | np.ndarray,
        languages: Sequence[str],
        use_itn: Sequence[bool],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, input_size) with lengths (B,) -> encoder output (B, T + 4, d) and its lengths.

        Output frames 0..3 answer the four queries; frame 4 + i is feature frame i. Each utterance has its
        own language and text-norm query, so mixed requests share one batch. Features computed on the CPU
        come as numpy arrays (``features.FeatureExtractor``) and are used in place.
        """
        features, lengths = torch.as_tensor(features), torch.as_tensor(lengths)
        language_rows = torch.tensor(
            [language_row(language) for language in languages], device=features.device
        )
        textnorm_rows = torch.tensor([textnorm_row(itn) for itn in use_itn], device=features.device)
        return self.encode_rows(features, lengths, language_rows, textnorm_rows)

    def encode_rows(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        language_rows: torch.Tensor,
        textnorm_rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` with the language and text-norm queries as embedding rows (B,), as ONNX takes them."""
        queries = self.embed(query_rows(language_rows, textnorm_rows))
        x = torch.cat([queries, features.to(queries.dtype)], dim=1)
        lengths = lengths.to(features.device) + NUM_QUERY_FRAMES
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        return self.encoder(x, valid), lengths

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, languages: Sequence[str], use_itn: Sequence[bool]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 CTC log-probabilities (B, T + 4, vocab) and their lengths."""
        encoded, lengths = self.encode(features, lengths, languages, use_itn)
        return self.ctc(encoded), lengths
