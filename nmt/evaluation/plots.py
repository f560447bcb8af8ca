"""Pictures for reports: per-head attention grids, the cross-attention alignment, run comparisons."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


CMAP = "Blues"  # the grids and the alignment share one colour map, so a shade means the same weight in both
# Long inputs (documents of ~1,000 subwords) keep a picture's size bounded: at 0.22 inch per subword a 1,150-subword
# grid of 4 heads was a 110,000 × 28,000-pixel canvas, 12 GB in memory. Past MAX_LABELS subwords an axis labels
# every k-th subword only (its position shows where), and a panel is at most MAX_INCHES on a side.
MAX_LABELS = 60
MAX_INCHES = 12.0


def _label_axes(ax, rows: Sequence[str], cols: Sequence[str], row_label: str, col_label: str, fontsize: int) -> None:
    """Subword ticks (keys across, rotated; queries down) and the axis names, the same in every attention picture;
    past MAX_LABELS subwords, every k-th one, labelled with its position (``417:▁the``)."""
    ax.set_xticks(*_ticks(cols), rotation=90, fontsize=fontsize)
    ax.set_yticks(*_ticks(rows), fontsize=fontsize)
    ax.set_xlabel(col_label, fontsize=fontsize + 1)
    ax.set_ylabel(row_label, fontsize=fontsize + 1)


def _ticks(pieces: Sequence[str]) -> tuple[range, list[str]]:
    """Tick positions and labels along one axis: every subword, or every k-th one of a long sequence."""
    if len(pieces) <= MAX_LABELS:
        return range(len(pieces)), list(pieces)
    every = math.ceil(len(pieces) / MAX_LABELS)
    where = range(0, len(pieces), every)
    return where, [f"{i}:{pieces[i]}" for i in where]


def _inches(n: int, per_subword: float, least: float) -> float:
    """One side of a panel for ``n`` subwords: ``per_subword`` inches each, at least ``least``, at most MAX_INCHES."""
    return min(MAX_INCHES, max(least, per_subword * n))


def head_grid(weights: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, path: Path,
              row_label: str = "target", col_label: str = "source") -> Path:
    """One panel per head: weights (n_heads, len(rows), len(cols)), queries down, keys across, labelled as the
    alignment heatmap is (``row_label`` / ``col_label``: "source" or "target"). All panels share one colour scale,
    0 to the grid's largest weight, shown by one colour bar, so heads can be compared."""
    n_heads = weights.shape[0]
    ncols = min(4, n_heads)
    nrows = math.ceil(n_heads / ncols)
    size = _inches(max(len(rows), len(cols)), 0.22, 2.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 1, size * nrows), squeeze=False)
    vmax = max(float(weights.max(initial=0.0)), 1e-9)
    image = None
    for head, ax in enumerate(axes.flat):
        if head >= n_heads:
            ax.axis("off")
            continue
        image = ax.imshow(weights[head], cmap=CMAP, vmin=0, vmax=vmax)
        ax.set_title(f"head {head}", fontsize=9)
        _label_axes(ax, rows, cols, row_label, col_label, fontsize=6)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, label="attention weight")
    fig.suptitle(title)
    return _save(fig, path)


def alignment(weights: np.ndarray, target: Sequence[str], source: Sequence[str], title: str, path: Path) -> Path:
    """Heatmap of cross-attention (target subwords down, source subwords across)."""
    fig, ax = plt.subplots(figsize=(_inches(len(source), 0.35, 4), _inches(len(target), 0.35, 3)))
    image = ax.imshow(weights, cmap=CMAP, vmin=0, vmax=max(float(weights.max(initial=0.0)), 1e-9))
    _label_axes(ax, target, source, "target", "source", fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.04, label="attention weight")
    return _save(fig, path)


def scatter(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], xlabel: str, ylabel: str,
            path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(xs, ys)
    for x, y, label in zip(xs, ys, labels):
        ax.annotate(label, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, path: Path,
           level: Optional[tuple[float, str]] = None) -> Path:
    """One line per series; ``level`` (value, label): a dashed horizontal line, e.g. a threshold."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker=".", label=label)
    if level is not None:
        ax.axhline(level[0], color="grey", linestyle="--", linewidth=1, label=level[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return _save(fig, path)


def layer_head_maps(columns: dict[str, dict[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """Heatmaps of per-head values: ``columns`` {quantity: {row name (e.g. a site): values (layers, n_heads)}}, a
    panel per row and quantity, layers down and heads across, each value written in its cell. Every quantity has
    one colour scale over all its panels (and one colour bar), so a shade means the same value in every row."""
    names = list(dict.fromkeys(row for panels in columns.values() for row in panels))
    most_heads = max((v.shape[1] for panels in columns.values() for v in panels.values()), default=1)
    most_layers = max((v.shape[0] for panels in columns.values() for v in panels.values()), default=1)
    fig, axes = plt.subplots(len(names), len(columns), squeeze=False, layout="constrained",
                             figsize=(max(3.5, 0.6 * most_heads + 2) * len(columns),
                                      (0.35 * most_layers + 1.2) * len(names) + 0.6))
    for col, (quantity, panels) in enumerate(columns.items()):
        values = [v for v in panels.values() if v.size]
        vmin = min((float(v.min()) for v in values), default=0.0)
        vmax = max((float(v.max()) for v in values), default=1.0)
        image = None
        for row, name in enumerate(names):
            ax = axes[row][col]
            if name not in panels or not panels[name].size:
                ax.axis("off")
                continue
            image = _value_map(ax, panels[name], vmin, max(vmax, vmin + 1e-12))
            ax.set_title(f"{name}: {quantity}", fontsize=9)
        if image is not None:
            fig.colorbar(image, ax=[axes[r][col] for r in range(len(names))], shrink=0.8, label=quantity)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _value_map(ax, values: np.ndarray, vmin: float, vmax: float):
    """One (layers, n_heads) panel with its values written in the cells (white on the darker half)."""
    image = ax.imshow(values, cmap=CMAP, vmin=vmin, vmax=vmax, aspect="auto")
    layers, heads = values.shape
    for layer in range(layers):
        for head in range(heads):
            value = float(values[layer, head])
            dark = value > vmin + 0.6 * (vmax - vmin)
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    ax.tick_params(labelsize=7)
    return image
