"""``tessera evaluate PREDICTIONS GT --out DIR``: a plug-in subcommand (``tessera.commands``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["EVALUATE_COMMAND", "EvaluateCommand"]


class EvaluateCommand:
    """Evaluate predictions against ground truth; write the report and its pictures."""

    name = "evaluate"
    help = "evaluate predictions against ground truth (COCO metrics, report, pictures)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """PREDICTIONS, GT, ``--out`` and the operating point."""
        parser.add_argument(
            "predictions",
            help="a predictions.jsonl export (or its folder) or a COCO results file",
        )
        parser.add_argument(
            "ground_truth",
            metavar="GT",
            help="a COCO dataset file, a local dataset folder, or a COCO export folder",
        )
        parser.add_argument("--out", required=True, help="folder for the report and pictures")
        parser.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox")
        parser.add_argument("--conf", type=float, default=0.5, help="operating confidence")
        parser.add_argument(
            "--iou-threshold", type=float, default=0.5, help="operating IoU (0.5, 0.55 ... 0.95)"
        )

    def run(self, args: argparse.Namespace) -> int:
        """Evaluate; print the headline figures; exit 2 on bad input."""
        from engine.evaluation import evaluate

        try:
            report = evaluate(
                args.predictions,
                args.ground_truth,
                iou_type=args.iou_type,
                conf=args.conf,
                iou_threshold=args.iou_threshold,
                out=args.out,
            )
        except ValueError as exc:
            print(f"tessera evaluate: error: {exc}", file=sys.stderr)
            return 2
        print(report.summary())
        for c in report.classes:
            print(
                f"  {c.name}: AP {c.ap:.3f}, AP50 {c.ap50:.3f}, best F1 {c.best_f1:.3f} "
                f"at conf {c.best_f1_confidence:.3f}"
            )
        print(f"  report: {args.out}/report.md")
        return 0


#: The instance the entry point names.
EVALUATE_COMMAND = EvaluateCommand()
