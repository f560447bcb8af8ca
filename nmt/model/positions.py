"""Position information: sinusoidal absolute embeddings and rotary embeddings (RoPE) for self-attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """(length, dim) table of Vaswani et al.: sin on the first half of the features, cos on the second."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half - 1, 1))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * freqs[None, :]  # (length, half)
    table = torch.cat([angles.sin(), angles.cos()], dim=1)  # (length, 2 * half)
    if dim % 2:
        table = torch.nn.functional.pad(table, (0, 1))
    return table


class SinusoidalPositions(nn.Module):
    """Adds sinusoidal position embeddings for absolute positions start … start + T - 1; grows on demand."""

    def __init__(self, d_model: int, initial_length: int = 1024) -> None:
        super().__init__()
        self.d_model = d_model
        # A plain fp32 attribute, not a buffer: model.to(bf16) must not round it; it follows the input's device.
        self.table = sinusoidal_table(initial_length, d_model)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        end = start + x.size(1)
        if end > self.table.size(0) or self.table.device != x.device:
            self.table = sinusoidal_table(max(end, self.table.size(0)), self.d_model, x.device)
        return x + self.table[start:end].to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotates query/key feature pairs by position-dependent angles (rotate-half layout), so q·k depends on the
    distance between positions. Applied to self-attention only: source and target positions are not comparable."""

    def __init__(self, head_dim: int, base: float = 10000.0, initial_length: int = 1024) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim (got {head_dim})")
        # Plain attributes, not buffers: model.to(bf16) must not round the frequencies; tables stay fp32.
        self.head_dim, self.base = head_dim, base
        self._cos, self._sin = self._tables(initial_length, torch.device("cpu"))

    def _tables(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        inv_freq = 1.0 / self.base ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float64)
                                       / self.head_dim)
        angles = torch.arange(length, device=device, dtype=torch.float64)[:, None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1)  # (length, head_dim)
        return angles.cos().float(), angles.sin().float()

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """x: (B, heads, T, head_dim) at absolute positions start … start + T - 1."""
        end = start + x.size(2)
        if end > self._cos.size(0) or self._cos.device != x.device:
            self._cos, self._sin = self._tables(max(end, self._cos.size(0)), x.device)
        cos = self._cos[start:end].to(x.dtype)  # (T, head_dim)
        sin = self._sin[start:end].to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)
        return x * cos + rotated * sin
