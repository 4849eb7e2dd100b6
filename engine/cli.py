"""The `tessera` command line: `tessera models`, `tessera predict`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.settings import SETTINGS

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `tessera` command."""
    parser = argparse.ArgumentParser(
        prog="tessera", description="Distributed inference for computer-vision models on Ray."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="list the models of the zoo")

    predict = commands.add_parser("predict", help="predict over images")
    predict.add_argument("inputs", nargs="+", help="image files, directories, URLs, projects")
    predict.add_argument("--model", required=True, help="zoo name or checkpoint path")
    predict.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    predict.add_argument("--address", default=None, help="Ray cluster to join")
    predict.add_argument("--out", required=True, type=Path, help="output directory")
    predict.add_argument("--visualize", action="store_true", help="also write drawn images")
    predict.add_argument("--no-pretrained", action="store_true", help="random weights (zoo models)")
    predict.add_argument("--weights", default=None, help="local weights file for a zoo model")
    predict.add_argument("--num-workers", type=int, default=None, help="model workers")
    for spec in SETTINGS:
        flag = "--" + spec.name.replace("_", "-")
        if spec.name == "progress":
            predict.add_argument("--no-progress", action="store_true", help="no progress bar")
        elif spec.cli_flag:
            predict.add_argument(flag, action="store_true", help=spec.help)
        else:
            predict.add_argument(flag, type=str, default=None, help=spec.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tessera` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    try:
        if args.command == "models":
            return _models()
        return _predict(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"tessera: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _models() -> int:
    from engine.models.zoo import list_models

    for entry in list_models():
        print(f"{entry.name:50s} {entry.task:22s} {entry.description}")
    return EXIT_OK


def _predict_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for spec in SETTINGS:
        if spec.name == "progress":
            options["progress"] = not args.no_progress
            continue
        value = getattr(args, spec.name)
        if spec.cli_flag:
            options[spec.name] = bool(value)
        elif value is not None:
            try:
                options[spec.name] = spec.cli_type(value) if spec.cli_type else value
            except ValueError as exc:
                flag = "--" + spec.name.replace("_", "-")
                raise ValueError(f"{flag}: cannot read {value!r}: {exc}") from exc
    return options


def _predict(args: argparse.Namespace) -> int:
    import engine

    options = _predict_options(args)
    model_options: dict[str, Any] = {}
    if args.no_pretrained:
        model_options["pretrained"] = False
    if args.weights:
        model_options["weights"] = args.weights
    if args.num_workers:
        model_options["num_workers"] = args.num_workers
    started = time.perf_counter()
    model = engine.deploy(args.model, device=args.device, address=args.address, **model_options)
    model.settings(**options)  # fail on bad options before touching the inputs
    inputs = args.inputs if len(args.inputs) > 1 else args.inputs[0]
    results = model.predict(inputs, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "predictions.jsonl", "w") as out:
        for prediction in results:
            out.write(json.dumps(prediction.to_dict()) + "\n")
    if args.visualize:
        _write_visualizations(results, args.out / "visualizations")
    summary = {**results.summary(), "seconds": round(time.perf_counter() - started, 2)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"{summary['items']} image(s): {summary['predicted']} predicted, "
        f"{summary['failed']} failed, {summary['skipped']} non-image file(s) skipped; "
        f"{summary['objects']} object(s) found in {summary['seconds']} s -> {args.out}"
    )
    for prediction in results.failed:
        print(f"  failed: {prediction.error}", file=sys.stderr)
    return EXIT_ITEMS_FAILED if results.failed else EXIT_OK


def _write_visualizations(results: Sequence[Any], folder: Path) -> None:
    used: set[str] = set()
    for prediction in results:
        if prediction.error is not None:
            continue
        name = Path(prediction.name).name or f"image_{prediction.index}"
        if not Path(name).suffix:
            name += ".png"
        if name in used:
            name = f"{prediction.index:05d}_{name}"
        used.add(name)
        prediction.visualize(save_path=folder / name)


if __name__ == "__main__":
    sys.exit(main())
