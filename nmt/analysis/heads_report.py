"""What `nmt analyze heads` writes: heads.json (everything), heads.md (the per-head table, the pruning table and the
verdict), heads.png (layers × heads heatmaps of entropy and importance per site) and pruning.png (BLEU against heads
masked, one curve per site); and the summary it prints."""

from __future__ import annotations

import json
from pathlib import Path

from nmt.analysis.head_scores import SiteScores
from nmt.analysis.pruning import Curve, Verdict
from nmt.config import SITES


def _rows(values) -> list:
    return [[float(x) for x in row] for row in values]


def to_json(meta: dict, scores: dict[str, SiteScores], curves: dict[str, Curve], metric: str,
            judged: Verdict) -> dict:
    """Everything the analysis found, as plain JSON types: ``meta`` (model, files, decoding, timings) and, per site,
    the per-head arrays (layers × n_heads) and the pruning curve."""
    sites = {site: {"layers": s.layers, "n_heads": s.n_heads, "n_kv_heads": s.n_kv_heads, "entropy": _rows(s.entropy),
                    "uniform_entropy": [float(x) for x in s.uniform_entropy], "importance": _rows(s.importance),
                    "importance_normalized": _rows(s.importance_normalized)} for site, s in scores.items()}
    pruning = {
        "metric": metric, "tolerance": judged.tolerance, "unpruned": judged.unpruned,
        "curves": {site: {"order": [list(p) for p in c.order], "masked": list(range(len(c.scores))),
                          metric: c.metric(metric), "chrf": c.metric("chrf"), "scores": c.scores,
                          "seconds": c.seconds} for site, c in curves.items()},
        "verdict": {"heads": judged.heads, "kept": judged.kept, "fewest": judged.fewest, "most": judged.most,
                    "conclusive": judged.conclusive},
    }
    return {**meta, "sites": sites, "pruning": pruning}


METRIC_NAMES = {"bleu": "BLEU", "bleu_tokenized": "tokenized BLEU"}


def verdict_line(judged: Verdict, metric: str) -> str:
    """The verdict in one sentence: which site keeps the smallest share of its heads within the tolerance (it
    tolerates the fewest heads) and which the largest."""
    def kept(sites: list[str]) -> str:
        return " and ".join(f"{s} ({judged.kept[s]} of {judged.heads[s]} heads)" for s in sites)

    within = f"Within {judged.tolerance:g} {METRIC_NAMES[metric]} of the unpruned {judged.unpruned:.2f}"
    if not judged.conclusive:
        return (f"The unpruned model scores {judged.unpruned:.2f} {METRIC_NAMES[metric]}, no more than the "
                f"tolerance ({judged.tolerance:g}): masking heads cannot cost more than that, so the curves cannot "
                "tell which site needs its heads (analyse a better-trained model).")
    if judged.fewest == judged.most:
        return f"{within}, every site keeps the same share of its heads: {kept(judged.fewest)}."
    verb = "gets" if len(judged.fewest) == 1 else "get"
    return (f"{within}, {kept(judged.fewest)} {verb} by with the fewest heads (the most prunable); "
            f"{kept(judged.most)} {'needs' if len(judged.most) == 1 else 'need'} the most (the least prunable).")


def _head_table(scores: dict[str, SiteScores]) -> list[str]:
    lines = ["| site | layer | head | K/V group | entropy (nats) | uniform ln(keys) | importance | normalized |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for site, s in scores.items():
        group = s.n_heads // s.n_kv_heads  # query heads per K/V head
        for layer in range(s.layers):
            for head in range(s.n_heads):
                lines.append(f"| {site} | {layer} | {head} | {head // group} | {s.entropy[layer, head]:.3f} | "
                             f"{s.uniform_entropy[layer]:.3f} | {s.importance[layer, head]:.3g} | "
                             f"{s.importance_normalized[layer, head]:.3f} |")
    return lines


def _pruning_table(curves: dict[str, Curve], metric: str) -> list[str]:
    sites = list(curves)
    lines = ["| heads masked | " + " | ".join(sites) + " |",
             "|---:|" + "---:|" * len(sites)]
    for k in range(max(len(c.scores) for c in curves.values())):
        cells = []
        for c in curves.values():
            last = f" ({c.order[k - 1][0]}.{c.order[k - 1][1]})" if 0 < k < len(c.scores) else ""
            cells.append(f"{c.scores[k][metric]:.2f}{last}" if k < len(c.scores) else "")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict, scores: dict[str, SiteScores], curves: dict[str, Curve], metric: str,
             judged: Verdict) -> str:
    d, name = report["decoding"], METRIC_NAMES[metric]
    search = "greedy" if d["beam"] == 1 else f"beam {d['beam']}"
    lines = [
        "# Head analysis", "",
        f"Model `{report['model']}`; {report['sentences']} sentences of `{report['src']}` → `{report['ref']}` "
        f"({report['scored_pairs']} pairs, {report['target_tokens']} target subwords in the teacher-forced passes); "
        f"{search}; {report['seconds']['total']:.0f} s.", "",
        "Entropy: mean over real query rows of −Σ p ln p of the head's attention, teacher-forced on the references; "
        "uniform ln(keys): the same mean for uniform attention. Importance (Michel et al. 2019): Σ over sentences "
        "of |∂L/∂ξ_h| per target subword, L the cross-entropy and ξ_h a gate on the head's output; normalized: "
        "divided by the layer's L2 norm, the order in which heads are masked below.", "",
        *_head_table(scores), "", "![entropy and importance](heads.png)", "",
        f"## Pruning: {name} as each site's least important heads are masked", "",
        "Masking order: increasing normalized importance over all layers of the site; the other sites keep every "
        f"head. Each cell: {name} after masking that many heads, and which head (layer.head) was masked last.", "",
        *_pruning_table(curves, metric), "", "![pruning curves](pruning.png)", "",
        f"**Verdict.** {verdict_line(judged, metric)}"
        + (f" A site keeps heads up to the first point that falls more than {judged.tolerance:g} below the unpruned "
           f"{name}." if judged.conclusive else ""), "",
    ]
    return "\n".join(lines)


def write_report(out: Path, report: dict, scores: dict[str, SiteScores], curves: dict[str, Curve], metric: str,
                 judged: Verdict) -> list[Path]:
    """heads.json, heads.md, heads.png and pruning.png in ``out`` (created); returns their paths."""
    from nmt.evaluation import plots

    out.mkdir(parents=True, exist_ok=True)
    (out / "heads.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "heads.md").write_text(markdown(report, scores, curves, metric, judged), encoding="utf-8")
    maps = {"entropy (nats)": {site: s.entropy for site, s in scores.items()},
            "importance (normalized)": {site: s.importance_normalized for site, s in scores.items()}}
    plots.layer_head_maps(maps, out / "heads.png", title="attention heads: entropy and importance")
    series = {site: (list(range(len(c.scores))), c.metric(metric)) for site, c in curves.items()}
    plots.curves(series, "heads masked (least important first)", METRIC_NAMES[metric], out / "pruning.png",
                 level=(judged.unpruned - judged.tolerance, f"unpruned − {judged.tolerance:g}"))
    return [out / name for name in ("heads.json", "heads.md", "heads.png", "pruning.png")]


def summary(scores: dict[str, SiteScores], judged: Verdict, metric: str) -> list[str]:
    """Short lines for stdout: per site the entropy range, the most and least important head, the heads kept."""
    lines = []
    for site in SITES:
        s = scores[site]
        top = divmod(int(s.importance_normalized.argmax()), s.n_heads)
        low = divmod(int(s.importance_normalized.argmin()), s.n_heads)
        lines.append(f"{site}: {s.layers} layers × {s.n_heads} heads; entropy {s.entropy.min():.2f}–"
                     f"{s.entropy.max():.2f} nats (uniform ≈ {s.uniform_entropy.mean():.2f}); most important "
                     f"L{top[0]}.H{top[1]}, least L{low[0]}.H{low[1]}; needs {judged.kept[site]} of "
                     f"{judged.heads[site]} heads to stay within {judged.tolerance:g} {METRIC_NAMES[metric]}")
    return lines + [verdict_line(judged, metric)]
