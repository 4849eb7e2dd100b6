"""`EvaluationReport`: the figures of `engine.evaluate`, and its pictures and report files.

Pictures are drawn with matplotlib's Agg backend (no display needed): per-class
precision-recall curves, the confusion matrix, and F1 against confidence; `write_report`
writes them as PNG beside ``metrics.json`` and a ``report.md`` that ties them together.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ClassMetrics", "EvaluationReport", "write_report"]

#: The files `write_report` writes.
REPORT_FILES = (
    "metrics.json",
    "report.md",
    "pr_curves.png",
    "confusion_matrix.png",
    "f1_confidence.png",
)


@dataclass
class ClassMetrics:
    """One class's figures (COCO AP/AR, -1 where the class has no ground truth)."""

    name: str
    ap: float
    ap50: float
    ar: float
    precision: float
    recall: float
    f1: float
    best_f1: float
    best_f1_confidence: float
    ground_truth: int
    detections: int


@dataclass
class EvaluationReport:
    """The numbers of one evaluation; `to_dict` gives them JSON-safe.

    Attributes:
        iou_type: "bbox" or "segm".
        map: COCO mAP@[.5:.95] (``COCOeval.stats[0]``); map50, map75 at IoU .5 / .75.
        map_small, map_medium, map_large: mAP per COCO size range (-1: no such objects).
        mar_1, mar_10, mar_100: COCO AR at 1, 10, 100 detections an image;
            mar_small, mar_medium, mar_large per size range.
        conf, iou_threshold: The operating point of precision, recall, F1 and the
            confusion matrix.
        precision, recall, f1: Over every class (micro) at ``conf``, matched as COCOeval
            matches at ``iou_threshold``.
        classes: Per-class figures, in the ground truth's category order.
        confusion_matrix: Rows the true class, columns the predicted one; the last row and
            column are "background" (`confusion_labels`).
        images: Images evaluated; predicted_images: those predicted (without an error).
        failed_images: The names of images whose prediction failed (a Prediction with an
            ``error``): scored as predicting nothing.
        curves: Per class, precision at COCO's 101 recall points (IoU .5) and F1 at the
            101 confidences 0, 0.01, ... 1 (for the pictures).
    """

    iou_type: str
    map: float
    map50: float
    map75: float
    map_small: float
    map_medium: float
    map_large: float
    mar_1: float
    mar_10: float
    mar_100: float
    mar_small: float
    mar_medium: float
    mar_large: float
    conf: float
    iou_threshold: float
    precision: float
    recall: float
    f1: float
    classes: list[ClassMetrics]
    confusion_matrix: list[list[int]]
    confusion_labels: list[str]
    images: int
    predicted_images: int
    failed_images: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """The figures as JSON-safe values (``curves`` too when asked)."""
        data = asdict(self)
        if not curves:
            data.pop("curves")
        return json.loads(json.dumps(data, default=float))

    def summary(self) -> str:
        """The headline figures in one line."""
        return (
            f"{self.iou_type}: mAP {self.map:.3f}, mAP50 {self.map50:.3f}, "
            f"mAP75 {self.map75:.3f}; at conf {self.conf:g}, IoU {self.iou_threshold:g}: "
            f"precision {self.precision:.3f}, recall {self.recall:.3f}, F1 {self.f1:.3f} "
            f"({self.images} image(s), {len(self.classes)} class(es)"
            + (f", {len(self.failed_images)} failed" if self.failed_images else "")
            + ")"
        )


def write_report(report: EvaluationReport, out: str | Path) -> list[Path]:
    """Write metrics.json, the three PNGs and report.md into ``out``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report.to_dict(curves=True), indent=2))
    recall_points = np.linspace(0, 1, 101)
    confidences = np.linspace(0, 1, 101)
    names = [c.name for c in report.classes]

    fig, ax = plt.subplots(figsize=(7, 5))
    for name in names:
        precision = np.asarray(report.curves[name]["precision"], float)
        if (precision >= 0).any():
            ax.plot(recall_points, np.where(precision < 0, np.nan, precision), label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"Precision-recall per class (IoU 0.5, {report.iou_type})")
    ax.legend(fontsize="small", loc="lower left")
    fig.savefig(out / "pr_curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    matrix = np.asarray(report.confusion_matrix)
    side = max(4.0, 0.6 * len(report.confusion_labels) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(report.confusion_labels))
    ax.set_xticks(ticks, report.confusion_labels, rotation=45, ha="right")
    ax.set_yticks(ticks, report.confusion_labels)
    ax.set(xlabel="predicted", ylabel="true")
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, str(value), ha="center", va="center", fontsize="small")
    ax.set_title(f"Confusion matrix (conf {report.conf:g}, IoU {report.iou_threshold:g})")
    fig.savefig(out / "confusion_matrix.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for name in names:
        ax.plot(confidences, report.curves[name]["f1"], label=name)
    ax.set(xlabel="confidence", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"F1 against confidence (IoU {report.iou_threshold:g})")
    ax.legend(fontsize="small", loc="lower left")
    fig.savefig(out / "f1_confidence.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    (out / "report.md").write_text(_markdown(report))
    return [out / name for name in REPORT_FILES]


def _markdown(report: EvaluationReport) -> str:
    def f(value: float) -> str:
        return "-" if value < 0 else f"{value:.3f}"

    lines = [
        f"# Evaluation ({report.iou_type})",
        "",
        f"{report.images} image(s), {report.predicted_images} with predictions. COCO metrics "
        "by pycocotools' COCOeval; -1 / '-' where no ground truth falls in a range.",
        "",
    ]
    if report.failed_images:
        shown = ", ".join(f"`{name}`" for name in report.failed_images[:20])
        more = len(report.failed_images) - 20
        lines += [
            f"**{len(report.failed_images)} image(s) could not be predicted** and count as "
            f"predicting nothing: {shown}" + (f" and {more} more." if more > 0 else "."),
            "",
        ]
    lines += [
        "| mAP | mAP50 | mAP75 | small | medium | large | AR@1 | AR@10 | AR@100 |",
        "|---|---|---|---|---|---|---|---|---|",
        "| "
        + " | ".join(
            f(v)
            for v in (
                report.map,
                report.map50,
                report.map75,
                report.map_small,
                report.map_medium,
                report.map_large,
                report.mar_1,
                report.mar_10,
                report.mar_100,
            )
        )  # fmt: skip
        + " |",
        "",
        f"At confidence {report.conf:g} and IoU {report.iou_threshold:g}: precision "
        f"{report.precision:.3f}, recall {report.recall:.3f}, F1 {report.f1:.3f}.",
        "",
        "| class | AP | AP50 | AR | precision | recall | F1 | best F1 | at conf | objects "
        "| detections |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.classes:
        lines.append(
            f"| {c.name} | {f(c.ap)} | {f(c.ap50)} | {f(c.ar)} | {c.precision:.3f} | "
            f"{c.recall:.3f} | {c.f1:.3f} | {c.best_f1:.3f} | {c.best_f1_confidence:.3f} | "
            f"{c.ground_truth} | {c.detections} |"
        )
    lines += [
        "",
        "![precision-recall curves](pr_curves.png)",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![F1 against confidence](f1_confidence.png)",
        "",
    ]
    return "\n".join(lines)
