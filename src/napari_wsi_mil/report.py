"""The demo's report: ``report.json`` with every number, ``report.html`` showing them,
its verdict (did learning happen?) and its figures (matplotlib Agg, no pyplot, no viewer).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

from napari_wsi_mil.jobs import atomic_file

#: The metrics of each (encoder, model) result in report.json, and their table headers
METRIC_COLUMNS = [
    ("auc", "bag AUC"),
    ("auc_interval", "95% interval"),
    ("balanced_accuracy", "balanced accuracy"),
    ("balanced_accuracy_interval", "95% interval"),
    ("instance_auc", "instance AUC"),
    ("dice", "Dice (tumour slides)"),
    ("specificity", "specificity (normal slides)"),
    ("encoder_spread", "encoder spread"),
    ("n_test_slides", "test slides"),
    ("n_tumour", "tumour"),
    ("n_normal", "normal"),
]
CHANCE = 0.5


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, tight_layout=True)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def roc_figure(curves: dict[str, dict[str, tuple[list[int], list[float]]]], path: Path) -> Path:
    """One panel per encoder, one ROC curve per model: ``curves[encoder][model] =
    (labels, probabilities)`` of the test slides."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = _figure(4.2 * len(curves), 4.0)
    for i, (encoder, models) in enumerate(curves.items(), start=1):
        ax = figure.add_subplot(1, len(curves), i)
        for model, (labels, probs) in models.items():
            if len(set(labels)) < 2:
                continue
            fpr, tpr, _ = roc_curve(labels, probs)
            ax.plot(fpr, tpr, label=f"{model} (AUC {roc_auc_score(labels, probs):.2f})")
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
        ax.set(
            title=f"encoder: {encoder}",
            xlabel="false positive rate",
            ylabel="true positive rate",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        if ax.get_legend_handles_labels()[0]:  # no curve when every result has one class
            ax.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def slide_figure(
    thumbnail: np.ndarray,
    slide_size: tuple[int, int],
    coords: np.ndarray,
    patch_size0: int,
    scores: np.ndarray,
    threshold: float,
    polygons: list[np.ndarray],
    title: str,
    path: Path,
) -> Path:
    """The slide with its instance-probability heatmap, the predicted tumour tiles
    (score >= threshold) outlined, and the true lesion outlines."""
    from matplotlib.patches import Rectangle

    width, height = slide_size
    figure = _figure(11, 4.6)
    extent = (0, width, height, 0)
    for i, overlay in enumerate((False, True), start=1):
        ax = figure.add_subplot(1, 2, i)
        ax.imshow(thumbnail, extent=extent)
        if overlay:
            step = patch_size0
            raster = np.full((height // step + 1, width // step + 1), np.nan)
            raster[coords[:, 1] // step, coords[:, 0] // step] = scores
            shown = ax.imshow(
                raster,
                extent=(0, raster.shape[1] * step, raster.shape[0] * step, 0),
                cmap="inferno",
                vmin=0,
                vmax=1,
                alpha=0.6,
            )
            figure.colorbar(shown, ax=ax, fraction=0.035, label="instance probability")
            for (x, y), s in zip(coords, scores, strict=True):
                if s >= threshold:
                    ax.add_patch(
                        Rectangle((x, y), step, step, fill=False, edgecolor="cyan", linewidth=0.6)
                    )
        for polygon in polygons:
            ax.plot(polygon[:, 0], polygon[:, 1], color="lime", linewidth=1.0)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_axis_off()
        ax.set_title(
            "slide and true lesion (green)"
            if not overlay
            else "heatmap, predicted tumour tiles (cyan)",
            fontsize="small",
        )
    figure.suptitle(title, fontsize="medium")
    return _save(figure, path)


def learned(result: dict) -> bool:
    """Whether a result's bag AUC is above chance: its bootstrap interval lies above 0.5."""
    interval = result.get("auc_interval")
    return interval is not None and interval[0] > CHANCE


def _auc_text(result: dict) -> str:
    interval = result.get("auc_interval")
    if result.get("auc") is None or interval is None:
        return "no bag AUC (the test slides hold one class only)"
    return f"bag AUC {result['auc']:.2f} (95% interval {interval[0]:.2f}-{interval[1]:.2f})"


def _name(encoder: str, model: str) -> str:
    names = {
        "weaksupcon": "WeakSupCon",
        "random": "random-init",
        "abmil": "AB-MIL",
        "weno": "WENO",
        "msclam": "MS-CLAM",
        "clam": "CLAM-SB",
        "clam-mb": "CLAM-MB",
        "transmil": "TransMIL",
        "dsmil": "DSMIL",
        "dtfd": "DTFD-MIL",
    }
    return f"{names.get(encoder, encoder)} + {names.get(model, model)}"


def verdict(
    results: list[dict], encoders: dict[str, dict], headline: tuple[str, str]
) -> tuple[bool, str, list[str]]:
    """``(learning happened, headline sentence, alarms)``.

    Learning happened when the ``headline`` (encoder, model) result's bag AUC interval
    lies above chance and its encoder did not collapse. An alarm (the report's red
    banner) names every collapsed encoder, every model whose training failed (training
    bag AUC below 0.5) and every result whose interval reaches 0.5.
    """
    by_pair = {(r["encoder"], r["model"]): r for r in results}
    main = by_pair[headline]
    n = main["n_test_slides"]
    collapse = encoders.get(headline[0], {}).get("collapse_warning")
    ok = learned(main) and collapse is None
    if ok:
        sentence = (
            f"Learning happened: {_name(*headline)} tells tumour from normal slides on "
            f"{n} held-out test slides with {_auc_text(main)}, above chance (0.5)."
        )
    elif learned(main):
        sentence = (
            f"Learning is not shown: {_name(*headline)} reaches {_auc_text(main)} on {n} "
            f"held-out test slides, but its encoder collapsed."
        )
    else:
        sentence = (
            f"No learning shown: {_name(*headline)} reaches {_auc_text(main)} on {n} "
            f"held-out test slides, no better than chance (0.5)."
        )
    others = [
        f"{_name(r['encoder'], r['model'])} {r['auc']:.2f}"
        for r in results
        if r is not main and r["model"] == headline[1] and r.get("auc") is not None
    ]
    if others:
        sentence += f" For comparison, bag AUC of {', '.join(others)}."
    alarms = [
        f"The {encoder} encoder collapsed: {state['collapse_warning']}"
        for encoder, state in encoders.items()
        if state.get("collapse_warning")
    ]
    alarms += [
        f"{_name(r['encoder'], r['model'])}: {r['failed']}" for r in results if r.get("failed")
    ]
    alarms += [
        f"{_name(r['encoder'], r['model'])} is at chance: {_auc_text(r)} includes 0.5 or "
        "lies below it."
        for r in results
        if not learned(r)
    ]
    return ok, sentence, alarms


def _listed(interval) -> list[float] | None:
    return None if interval is None else list(interval)


def findings(
    *,
    title: str,
    metrics: dict[tuple[str, str], dict],
    encoders: dict[str, dict],
    headline: tuple[str, str],
    summary: list[str],
    settings: dict,
    figures: list[tuple[str, Path]],
    timings: dict[str, dict[str, float]],
) -> dict:
    """The report as one JSON-ready dict; ``report.html`` shows exactly these numbers.

    ``metrics[(encoder, model)]`` are :func:`~napari_wsi_mil.mil.infer.evaluate_predictions`
    results (with their bootstrap intervals and class counts, and ``failed``: why the
    model's training failed, or None); ``encoders[name]`` holds ``spread`` and
    ``collapse_warning`` (None when not pretrained or not collapsed).
    """
    results = []
    for (encoder, model), values in metrics.items():
        result = {
            "encoder": encoder,
            "model": model,
            "auc": values.get("auc"),
            "auc_interval": _listed(values.get("auc_interval")),
            "balanced_accuracy": values.get("balanced_accuracy"),
            "balanced_accuracy_interval": _listed(values.get("balanced_accuracy_interval")),
            "instance_auc": values.get("instance_auc"),
            "dice": values.get("dice"),
            "specificity": values.get("specificity"),
            "encoder_spread": encoders[encoder]["spread"],
            "n_test_slides": values.get("n"),
            "n_tumour": values.get("n_positive"),
            "n_normal": values.get("n_negative"),
            "failed": values.get("failed"),
        }
        result["above_chance"] = learned(result)
        results.append(result)
    ok, sentence, alarms = verdict(results, encoders, headline)
    return {
        "title": title,
        "learning_happened": ok,
        "headline": sentence,
        "alarms": alarms,
        "headline_pair": list(headline),
        "summary": summary,
        "encoders": encoders,
        "results": results,
        "settings": settings,
        "figures": [{"caption": caption, "path": str(path)} for caption, path in figures],
        "timings": timings,
    }


def _relative(image: str | Path, page: Path) -> str:
    return os.path.relpath(image, page.parent)


def _cell(value) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "&ndash;".join(f"{v:.2f}" for v in value)
    return f"{value:.3f}"


_BANNER = "background:#c62828;color:#fff;padding:0.6em 1em;border-radius:4px;font-weight:bold"


def write_report(path: str | os.PathLike, report: dict) -> Path:
    """``report.html`` (self-contained, images by relative path) and ``report.json``
    beside it, both from the :func:`findings` dict."""
    path = Path(path)
    e = html.escape
    rows = []
    for r in report["results"]:
        cells = "".join(f"<td>{_cell(r.get(key))}</td>" for key, _ in METRIC_COLUMNS)
        rows.append(f"<tr><td>{e(r['encoder'])}</td><td>{e(r['model'])}</td>{cells}</tr>")
    header = "".join(f"<th>{label}</th>" for _, label in METRIC_COLUMNS)
    images = "".join(
        f"<h2>{e(f['caption'])}</h2><img src='{e(_relative(f['path'], path))}' "
        "style='max-width:100%'>"
        for f in report["figures"]
    )
    stages = "".join(
        f"<li>{e(k)}: {v['wall_s']:.1f} s (CPU {v['cpu_s']:.1f} s)</li>"
        for k, v in report["timings"].items()
    )
    items = "".join(f"<li>{e(line)}</li>" for line in report["summary"])
    banner = "".join(f"<p>{e(a)}</p>" for a in report["alarms"])
    banner = f"<div class='banner' style='{_BANNER}'>{banner}</div>" if banner else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(report["title"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 8px;
text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}</style></head>
<body><h1>{e(report["title"])}</h1><p class='headline'>{e(report["headline"])}</p>
{banner}<ul>{items}</ul>
<h2>Test-set metrics</h2><table><tr><th>encoder</th><th>model</th>{header}</tr>
{"".join(rows)}</table>{images}<h2>Time per stage</h2><ul>{stages}</ul>
<p>Every number on this page is in <a href='report.json'>report.json</a>.</p></body></html>
"""
    with atomic_file(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    with atomic_file(path.with_name("report.json")) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return path
