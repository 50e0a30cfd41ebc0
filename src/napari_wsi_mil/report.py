"""The demo's HTML report and its figures (matplotlib Agg, no pyplot, no viewer)."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from napari_wsi_mil.jobs import atomic_file

METRIC_COLUMNS = [
    ("auc", "bag AUC"),
    ("balanced_accuracy", "balanced accuracy"),
    ("instance_auc", "instance AUC"),
    ("dice", "Dice (tumour slides)"),
    ("specificity", "specificity (normal slides)"),
]


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


def _relative(image: Path, page: Path) -> str:
    return os.path.relpath(image, page.parent)


def _cell(value) -> str:
    return "&ndash;" if value is None else f"{value:.3f}"


def write_report(
    path: str | os.PathLike,
    *,
    title: str,
    summary: list[str],
    metrics: dict[tuple[str, str], dict],
    figures: list[tuple[str, Path]],
    timings: dict[str, float],
) -> Path:
    """A self-contained HTML page (images referenced by relative path)."""
    path = Path(path)
    rows = []
    for (encoder, model), values in metrics.items():
        cells = "".join(f"<td>{_cell(values.get(key))}</td>" for key, _ in METRIC_COLUMNS)
        rows.append(f"<tr><td>{html.escape(encoder)}</td><td>{html.escape(model)}</td>{cells}</tr>")
    header = "".join(f"<th>{label}</th>" for _, label in METRIC_COLUMNS)
    images = "".join(
        f"<h2>{html.escape(caption)}</h2><img src='{html.escape(_relative(img, path))}' "
        "style='max-width:100%'>"
        for caption, img in figures
    )
    stages = "".join(f"<li>{html.escape(k)}: {v:.1f} s</li>" for k, v in timings.items())
    items = "".join(f"<li>{html.escape(line)}</li>" for line in summary)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 8px;
text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}</style></head>
<body><h1>{html.escape(title)}</h1><ul>{items}</ul>
<h2>Test-set metrics</h2><table><tr><th>encoder</th><th>model</th>{header}</tr>
{"".join(rows)}</table>{images}<h2>Time per stage</h2><ul>{stages}</ul></body></html>
"""
    with atomic_file(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path
