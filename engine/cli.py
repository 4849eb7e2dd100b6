"""The `tessera` command line: models, predict, track, and the plug-ins' subcommands.

Subcommands such as ``tessera serve`` and ``tessera upload`` come from the packages that
register them (`engine.plugins.commands`); a platform's id inputs become ``predict``
flags (``--project-id``) from the keywords it declares.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine import plugins
from engine.outputs import DEFAULT_EXPORT_FORMAT, UPLOAD_MODES, check_out_folder
from engine.settings import SETTINGS, check_settings

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `tessera` command."""
    parser = argparse.ArgumentParser(
        prog="tessera", description="Distributed inference for computer-vision models on Ray."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="list the models of the zoo")

    predict = commands.add_parser("predict", help="predict over images and videos")
    predict.add_argument(
        "inputs", nargs="*", help="image and video files, directories, URLs, projects"
    )
    for keyword, (platform, help_text) in _platform_flags().items():
        predict.add_argument(
            "--" + keyword.removesuffix("s").replace("_", "-"),
            dest=keyword,
            type=_id_reader(platform),
            action="append",
            default=[],
            help=help_text,
        )
    predict.add_argument("--visualize", action="store_true", help="also write drawn images")
    predict.add_argument(
        "--save-txt", action="store_true", help="also write YOLO label files under labels/"
    )
    predict.add_argument(
        "--save-crop", action="store_true", help="also write each object's crop under crops/"
    )
    predict.add_argument(
        "--format",
        default=DEFAULT_EXPORT_FORMAT,
        choices=plugins.export_formats(),
        help="how --out holds the predictions (default jsonl: predictions.jsonl)",
    )
    predict.add_argument(
        "--upload", default=None, choices=UPLOAD_MODES, help="also upload to --to in this mode"
    )
    predict.add_argument(
        "--to",
        default=None,
        help="platform to upload to: " + (", ".join(plugins.uploader_names()) or "none installed"),
    )
    predict.add_argument(
        "--upload-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="connector or upload option, e.g. project_name=cars, requests_per_second=5",
    )
    predict.add_argument(
        "--job-id", default=None, help="id of this job (default: a new one, printed)"
    )
    predict.add_argument(
        "--resume",
        default=None,
        metavar="JOB",
        help="continue the killed job JOB: predict only what it is missing, into its outputs",
    )
    predict.add_argument(
        "--journal-dir", default=None, help="where job directories live (~/.tessera/jobs)"
    )
    _add_model_and_settings(predict, required=False)

    for command in plugins.commands().values():
        command.add_arguments(commands.add_parser(command.name, help=command.help))

    local = commands.add_parser(
        "ray", help="Tessera's local Ray, which outlives each call (status, start, stop)"
    )
    local.add_argument("action", choices=["status", "start", "stop"])
    local.add_argument(
        "--idle-s", type=float, default=None, help="with start: stop after this long unused"
    )

    track = commands.add_parser("track", help="detect and track objects through videos")
    track.add_argument("inputs", nargs="+", help="video files or directories of videos")
    track.add_argument(
        "--tracker", default="bytetrack", help="bytetrack (default), ocsort, botsort, ..."
    )
    track.add_argument("--reid-weights", default=None, help="local ReID weights (ReID trackers)")
    track.add_argument("--no-video", action="store_true", help="skip the annotated video")
    _add_model_and_settings(track)
    return parser


def _platform_flags() -> dict[str, tuple[plugins.Platform, str]]:
    """Each platform's plural id keyword -> (platform, help text), for a repeatable ``--<id>``."""
    return {
        keyword: (platform, help_text)
        for platform in plugins.platforms().values()
        for keyword, help_text in platform.input_keywords.items()
    }


def _id_reader(platform: plugins.Platform) -> Any:
    """An argparse ``type`` reading one id of ``platform`` (a bad one is a usage error)."""

    def read(text: str) -> Any:
        try:
            return platform.cli_id(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    read.__name__ = f"{platform.name} id"
    return read


def _add_model_and_settings(command: argparse.ArgumentParser, required: bool = True) -> None:
    optional = "" if required else " (with --resume: the job's)"
    command.add_argument(
        "--model", required=required, help="zoo name or checkpoint path" + optional
    )
    command.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    command.add_argument("--address", default=None, help="Ray cluster to join")
    command.add_argument("--out", required=required, type=Path, help="output directory" + optional)
    command.add_argument(
        "--exist-ok",
        action="store_true",
        help="write into an --out folder that holds files (same names are replaced)",
    )
    command.add_argument("--no-pretrained", action="store_true", help="random weights (zoo models)")
    command.add_argument("--weights", default=None, help="local weights file for a zoo model")
    command.add_argument("--num-workers", type=int, default=None, help="model workers")
    command.add_argument(
        "--half", action="store_true", help="float16 inference on the GPU (with --device cuda)"
    )
    for spec in SETTINGS:
        flag = "--" + spec.name.replace("_", "-")
        if spec.name == "progress":
            command.add_argument("--no-progress", action="store_true", help="no progress bar")
        elif spec.cli_flag:
            command.add_argument(flag, action="store_true", help=spec.help)
        else:
            command.add_argument(flag, type=str, default=None, help=spec.help)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tessera` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    try:
        if args.command in plugins.commands():
            return plugins.commands()[args.command].run(args)
        if args.command == "models":
            return _models()
        if args.command == "track":
            return _track(args)
        if args.command == "ray":
            return _local_ray(args.action, args.idle_s)
        return _predict(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"tessera: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _models() -> int:
    from engine.models.zoo import list_models

    for entry in list_models():
        print(f"{entry.name:50s} {entry.task:22s} {entry.description}")
    return EXIT_OK


def _local_ray(action: str, idle_s: float | None) -> int:
    from engine import local_ray

    if action == "start":
        if idle_s is not None:
            local_ray.checked_idle(idle_s, "--idle-s")  # the error names the flag given
        print(local_ray.start_local_ray(idle_stop_s=idle_s).describe())
    elif action == "stop":
        stopped = local_ray.stop_local_ray()
        print(f"stopped {stopped.describe()}" if stopped else "no Tessera local Ray is running")
    else:
        running = local_ray.running_local_ray()
        if running is None:
            print(f"no Tessera local Ray is running ({local_ray.local_ray_dir()})")
        else:
            users = local_ray.live_leases(running.directory)
            print(f"{running.describe()}; used by {len(users)} process(es): {users}")
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


def _check_device(args: argparse.Namespace) -> None:
    """Refuse --half without a GPU device, before anything starts."""
    if args.half and not str(args.device).startswith("cuda"):
        raise ValueError(
            f"--half runs the model in float16 on a GPU: add --device cuda "
            f"(got --device {args.device})"
        )


def _deploy(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    import engine

    model_options: dict[str, Any] = {}
    if args.no_pretrained:
        model_options["pretrained"] = False
    if args.weights:
        model_options["weights"] = args.weights
    if args.num_workers:
        model_options["num_workers"] = args.num_workers
    if args.half:
        model_options["half"] = True
    model = engine.deploy(args.model, device=args.device, address=args.address, **model_options)
    model.settings(**options)  # fail on bad options before touching the inputs
    return model


def _predict(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _resume(args)
    missing = [flag for flag, value in (("--model", args.model), ("--out", args.out)) if not value]
    if missing:
        raise ValueError(f"predict needs {' and '.join(missing)} (unless it is --resume JOB)")
    options = _predict_options(args)
    platform_inputs = {k: getattr(args, k) for k in _platform_flags() if getattr(args, k)}
    check_settings(options)  # what the arguments alone tell, before Ray or a model starts
    _check_device(args)
    if not args.inputs and not platform_inputs:
        raise ValueError(
            "nothing to predict: give INPUTS (paths, folders, URLs) or a platform's ids "
            f"({', '.join('--' + k.replace('_', '-') for k in _platform_flags())})"
        )
    check_out_folder(args.out, args.exist_ok)
    started = time.perf_counter()
    model = _deploy(args, options)
    inputs = (args.inputs if len(args.inputs) > 1 else args.inputs[0]) if args.inputs else None
    options.update(platform_inputs)
    outputs = {"out": args.out, "format": args.format, "exist_ok": args.exist_ok}
    if args.upload or args.to:
        outputs.update(
            upload=args.upload, to=args.to, upload_options=key_values(args.upload_option)
        )
    job = {"job_id": args.job_id, "journal_dir": args.journal_dir}
    # streamed: the command holds no prediction once written (a large job's input is
    # listed as it goes too)
    results = model.predict(inputs, **outputs, **job, **options, stream=True)
    return _report(args, results, args.out, started)


def _resume(args: argparse.Namespace) -> int:
    """``predict --resume JOB``: the job's model (unless --model), inputs and outputs.

    ``--upload-option`` may give again the upload options the record keeps redacted.
    """
    import engine
    from engine.jobs import JobRecord

    given = [name for name in ("inputs", "upload", "to") if getattr(args, name)]
    given += [k for k in _platform_flags() if getattr(args, k)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"--resume takes the job's inputs and outputs; drop {flags}")
    record = JobRecord.load(args.resume, args.journal_dir)
    out = record.outputs.get("out")
    if args.out is not None and out is not None and Path(args.out).resolve() != Path(out):
        raise ValueError(
            f"job {args.resume!r} cannot be resumed into other outputs: "
            f"out: {out!r} in the job, {str(args.out)!r} now"
        )
    started = time.perf_counter()
    results = engine.resume(
        args.resume,
        model=args.model,
        journal_dir=args.journal_dir,
        address=args.address,
        upload_options=key_values(args.upload_option) or None,
        **_given_options(args),
    )
    folder = Path(out) if out is not None else Path(record.directory)
    return _report(args, results, folder, started)


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (not their defaults): a resume's overrides."""
    options = _predict_options(args)
    for spec in SETTINGS:
        if spec.cli_flag and not options.get(spec.name):
            options.pop(spec.name, None)
    return options


def _report(args: argparse.Namespace, results: Any, out: Path, started: float) -> int:
    """Read the results to the end (saving pictures), write ``summary.json``, print it.

    Returns:
        The exit code.
    """
    _write_views(args, results, out)
    summary = {
        **results.summary(),
        "seconds": round(time.perf_counter() - started, 2),
        "outputs": results.outputs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"{summary['items']} image(s): {summary['predicted']} predicted, "
        f"{summary['failed']} failed, {summary['skipped']} non-image file(s) skipped; "
        f"{summary['objects']} object(s) found in {summary['seconds']} s -> {out}"
    )
    job = results.outputs.get("job")
    if job:
        print(f"  job {job['job_id']}: resume with tessera predict --resume {job['job_id']}")
    for name, report in results.outputs.items():
        print(f"  {name}: {json.dumps(report, default=str)}")
    for prediction in results.failed:
        print(f"  failed: {prediction.error}", file=sys.stderr)
    return EXIT_ITEMS_FAILED if results.failed or _upload_lost(results.outputs) else EXIT_OK


def _upload_lost(outputs: dict[str, Any]) -> bool:
    """True when an upload left items undelivered (dead) or failed as a whole."""
    return any(
        name.startswith("upload:") and (report.get("dead") or report.get("error"))
        for name, report in outputs.items()
    )


def key_values(pairs: Sequence[str], option: str = "--upload-option") -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values read as JSON when they parse).

    Raises:
        ValueError: A pair without ``=``; the message names ``option``.

    Example:
        >>> key_values(["deployment_id=d-1", "queue_size=10"], "--monitor-option")
        {'deployment_id': 'd-1', 'queue_size': 10}
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option}: expected KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _track(args: argparse.Namespace) -> int:
    from engine.tracking import check_tracker

    options = _predict_options(args)
    check_settings(options)  # what the arguments alone tell, before Ray or a model starts
    _check_device(args)
    check_tracker(args.tracker, args.reid_weights)
    check_out_folder(args.out, args.exist_ok)
    started = time.perf_counter()
    model = _deploy(args, options)
    annotations = model.track(
        args.inputs, tracker=args.tracker, reid_weights=args.reid_weights, **options
    )
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for annotation in annotations:
        if annotation.error is not None:
            failed += 1
            print(f"  failed: {annotation.error}", file=sys.stderr)
            continue
        written = annotation.save(args.out, video=not args.no_video)
        frame_errors = [p.error for p in annotation.frames if p.error is not None]
        failed += bool(frame_errors)
        for error in frame_errors:
            print(f"  failed: {error}", file=sys.stderr)
        print(
            f"{annotation.name}: {len(annotation.frames)} frame(s), "
            f"{len(annotation.track_ids())} track(s) -> "
            + ", ".join(str(p) for p in written.values())
        )
    print(f"{len(annotations)} video(s) in {round(time.perf_counter() - started, 2)} s")
    return EXIT_ITEMS_FAILED if failed else EXIT_OK


def _write_views(args: argparse.Namespace, results: Iterable[Any], out: Path) -> None:
    """Read the results to the end (a stream predicts as it is read), saving views.

    For each predicted image, what the flags ask for: drawings (with class and score
    tags), YOLO labels, crops (`engine.saved_views`). Equal names are numbered, never
    overwritten.
    """
    from engine.saved_views import save_crops, save_yolo_labels

    visualize = getattr(args, "visualize", False)
    save_txt, save_crop = getattr(args, "save_txt", False), getattr(args, "save_crop", False)
    for prediction in results:
        if prediction.error is not None:
            continue
        if visualize:
            prediction.visualize(save_dir=out / "visualizations", draw_tags=True)
        if save_txt:
            save_yolo_labels(prediction, out / "labels")
        if save_crop:
            save_crops(prediction, out / "crops")


if __name__ == "__main__":
    sys.exit(main())
