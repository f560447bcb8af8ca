"""The training loss: label-smoothed cross-entropy over the output projection, fused on CPU.

The readable path, ``label_smoothed_loss(F.linear(hidden, weight), target, ε)``, is the test oracle and what runs on
GPUs, in float64 and under float16 autocast. On CPU, in float32 or under bf16 autocast
(``trainer.precision=bf16-mixed``), ``ProjectedLoss`` computes the same value and gradients in one float32 (tokens,
vocab) buffer that it keeps from step to step: the logits, then, in place, their softmax minus the smoothed target
distribution, which is the gradient, so backward is two matmuls. The readable path allocates three fresh (tokens, vocab)
tensors per step (logits, log-probabilities, their gradient; 4,096 × 8,000 floats = 128 MB each), and glibc serves
blocks that large with a new mmap that the kernel faults in page by page on first touch. Without them a Transformer-tiny
training step on this project's CPU machine runs 1.32× faster (``python scripts/fused_loss.py``). Under bf16 autocast
the two products run in bf16, as autocast's ``F.linear`` would (the logits rounded to bf16, then the softmax in float32,
as ``label_smoothed_loss`` computes it), through a second, bf16 buffer also kept from step to step; the readable path
under autocast took about a quarter of a `small` training step on a CPU with AVX512-BF16 (``nmt bench train --models
small``).
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.data.tokenizer import PAD_ID


def label_smoothed_loss(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, int]:
    """Summed label-smoothed cross-entropy over non-padding targets, and their count."""
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=PAD_ID,
        label_smoothing=smoothing,
        reduction="sum",
    )
    return loss, int((target != PAD_ID).sum())


class _Workspace:
    """One (rows, vocab) buffer, reused by every step, lent to at most one pending backward."""

    def __init__(self) -> None:
        self.buffer: Optional[Tensor] = None
        self._borrower: Optional[weakref.ref] = None  # the gradient view a pending backward holds

    @property
    def lent(self) -> bool:
        """Held by a graph: until its backward, or until it is dropped unused (the view then dies with it)."""
        return self._borrower is not None and self._borrower() is not None

    def lend(self, view: Tensor) -> None:
        """Lent while ``view`` lives: backward drops it, and so does a graph discarded without a backward."""
        self._borrower = weakref.ref(view)

    def take(self, rows: int, cols: int, like: Tensor, dtype: Optional[torch.dtype] = None) -> tuple[Tensor, bool]:
        """A (rows, cols) tensor of ``dtype`` (default ``like``'s) and whether it is the shared buffer (False: a
        one-off, while the buffer is lent)."""
        dtype = dtype or like.dtype
        if self.lent:  # two forwards before one backward: the first graph still holds the buffer
            return torch.empty(rows, cols, dtype=dtype, device=like.device), False
        if self.buffer is None or self.buffer.numel() < rows * cols or self.buffer.dtype != dtype:
            self.buffer = None  # free the old one before allocating its successor
            self.buffer = torch.empty(rows * cols, dtype=dtype, device=like.device)
        return self.buffer[: rows * cols].view(rows, cols), True


class _FusedProjectedLoss(torch.autograd.Function):
    """sum over non-padding rows of CE_ε(hidden · weightᵀ, target), with the gradient formed during forward.

    ``low``: None for float32 products; under bf16 autocast, the workspace whose bf16 (N, vocab) buffer the two
    products write and read (used within forward or within backward only, so never lent)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, smoothing: float, workspace: _Workspace,
                needs_grad: bool, low: Optional[_Workspace] = None):
        rows, vocab = hidden.size(0), weight.size(0)
        logits, shared = workspace.take(rows, vocab, hidden, torch.float32)
        ctx.grad_dtypes = hidden.dtype, weight.dtype
        if low is None:
            torch.mm(hidden, weight.t(), out=logits)  # (N, vocab)
        else:
            hidden, weight = hidden.to(torch.bfloat16), weight.to(torch.bfloat16)
            low_logits, _ = low.take(rows, vocab, hidden)
            logits.copy_(torch.mm(hidden, weight.t(), out=low_logits))  # (N, vocab), rounded as autocast's linear
        padding = (target == PAD_ID).nonzero().squeeze(1)  # (n_pad,)
        picked = logits.gather(1, target[:, None]).squeeze(1)  # (N,)
        mean = logits.mean(dim=1) if smoothing else None  # (N,)
        # logsumexp by hand, in place: torch.logsumexp would allocate another (N, vocab) temporary
        peak = logits.amax(dim=1)  # (N,)
        total = logits.sub_(peak[:, None]).exp_().sum(dim=1)  # (N,); logits now hold exp(x - max)
        lse = peak + total.log()  # (N,)
        # CE_ε = (1-ε)(lse - x_target) + ε(lse - mean x): PyTorch's label smoothing, spread over all classes
        per_row = lse - (1 - smoothing) * picked
        if smoothing:
            per_row = per_row - smoothing * mean
        loss = per_row.index_fill(0, padding, 0.0).sum()
        if needs_grad:  # (needs_input_grad is set under no_grad too, where no backward will come)
            grad = logits.div_(total[:, None])  # softmax, in place: (N, vocab)
            if smoothing:
                grad.sub_(smoothing / vocab)
            grad.scatter_add_(1, target[:, None], torch.full_like(picked[:, None], smoothing - 1.0))
            grad.index_fill_(0, padding, 0.0)
            ctx.save_for_backward(hidden, weight)  # bf16 copies under autocast, for backward's bf16 products
            ctx.grad, ctx.low = grad, low  # the only reference to the view: dropping it gives the buffer back
            if shared:
                workspace.lend(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        if ctx.grad is None:
            raise RuntimeError("the fused loss forms its gradient once, in forward: a second backward through the "
                               "same graph (retain_graph=True) is not supported; compute the loss again")
        hidden, weight = ctx.saved_tensors
        grad = ctx.grad
        if ctx.low is not None:
            low_grad, _ = ctx.low.take(*grad.shape, hidden)
            grad = low_grad.copy_(grad)  # (N, vocab) bf16: the products run as autocast's linear backward would
        ctx.grad = None  # the float32 buffer is free again
        grad_hidden = grad_weight = None
        hidden_dtype, weight_dtype = ctx.grad_dtypes
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.mm(grad, weight).to(hidden_dtype).mul_(grad_loss)  # (N, d_model)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(grad.t(), hidden).to(weight_dtype).mul_(grad_loss)  # (vocab, d_model)
        return grad_hidden, grad_weight, None, None, None, None, None


def fused_applies(hidden: Tensor, weight: Tensor) -> bool:
    """The fused path: CPU, float32, either without autocast or under bf16 autocast (where the page faults it avoids
    were measured; autocast hands on a float32 or bf16 ``hidden``)."""
    if hidden.device.type != "cpu" or weight.dtype != torch.float32:
        return False
    if not torch.is_autocast_enabled("cpu"):
        return hidden.dtype == torch.float32
    return bf16_autocast() and hidden.dtype in (torch.float32, torch.bfloat16)


def bf16_autocast() -> bool:
    """CPU autocast is on, to bf16."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class ProjectedLoss:
    """Summed label-smoothed cross-entropy of ``F.linear(hidden, weight)`` over non-padding targets, and their count.

    hidden (..., d_model), weight (vocab, d_model), target (...) token ids with PAD_ID where there is no target.
    """

    def __init__(self) -> None:
        self.workspace = _Workspace()
        self.low = _Workspace()  # bf16 products under autocast

    def __call__(self, hidden: Tensor, weight: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, int]:
        hidden = hidden.reshape(-1, hidden.size(-1))  # (N, d_model)
        target = target.reshape(-1)  # (N,)
        if not fused_applies(hidden, weight):
            return label_smoothed_loss(F.linear(hidden, weight), target, smoothing)
        needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
        low = self.low if bf16_autocast() else None
        with torch.autocast("cpu", enabled=False):  # the products' dtype is chosen above, not by autocast
            loss = _FusedProjectedLoss.apply(hidden, weight, target, smoothing, self.workspace, needs_grad, low)
        return loss, int((target != PAD_ID).sum())
