"""``tessera serve``: run the online-prediction server until Ctrl-C.

This module imports only `argparse` at load time, so `tessera --help` stays fast; Ray,
Serve and FastAPI load when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ServeCommand:
    """``tessera serve``: an `engine.plugins.Command` (entry point ``tessera.commands``).

    Example:
        >>> parser = argparse.ArgumentParser(prog="tessera")
        >>> commands = parser.add_subparsers(dest="command")
        >>> SERVE_COMMAND.add_arguments(commands.add_parser("serve", help=SERVE_COMMAND.help))
        >>> parser.parse_args(["serve", "--model", "reference/color-boxes"]).port
        8000
    """

    name = "serve"
    help = "run the online prediction server (Ray Serve, HTTP)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the options of ``tessera serve`` on its subcommand parser."""
        parser.description = "Serve a model over HTTP: POST /predict, /sessions, GET /info, /docs."
        parser.add_argument("--model", required=True, help="zoo name or checkpoint path")
        parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
        parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000)")
        parser.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
        parser.add_argument(
            "--max-batch-size", type=int, default=8, help="images per model batch (default 8)"
        )
        parser.add_argument(
            "--batch-wait-ms",
            type=float,
            default=10.0,
            help="longest wait for a batch to fill, in ms (default 10)",
        )
        parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
        parser.add_argument(
            "--gpus-per-replica", type=float, default=0, help="GPUs per replica (cuda: default 1)"
        )
        parser.add_argument(
            "--token",
            default=None,
            help="bearer token clients must send (default: $TESSERA_SERVE_TOKEN; none if unset)",
        )
        parser.add_argument(
            "--monitoring", default=None, help="monitoring JSONL file (default ~/.tessera/serve/)"
        )
        parser.add_argument("--shadow", default=None, help="a shadow model that sees every image")
        parser.add_argument(
            "--monitor",
            default=None,
            metavar="PLATFORM",
            help="send every answered image to this platform's deployment monitoring "
            "(e.g. picsellia; credentials from the environment)",
        )
        parser.add_argument(
            "--monitor-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a monitor option, e.g. deployment_id=..., queue_size=1000 (repeatable)",
        )
        parser.add_argument(
            "--allow-private-urls",
            action="store_true",
            help="let URL inputs point to loopback, private and link-local addresses",
        )
        parser.add_argument(
            "--allow-network",
            action="append",
            default=[],
            metavar="CIDR",
            help="a private network URL inputs may point to (repeatable)",
        )
        parser.add_argument(
            "--max-request-mb", type=float, default=50.0, help="largest request body (default 50)"
        )
        parser.add_argument("--max-pixels", type=int, default=None, help="largest image, in pixels")
        parser.add_argument("--name", default="tessera", help="the Serve application's name")
        parser.add_argument("--address", default=None, help="Ray cluster to join")
        parser.add_argument("--no-pretrained", action="store_true", help="random weights (zoo)")
        parser.add_argument("--weights", default=None, help="local weights file for a zoo model")

    def run(self, args: argparse.Namespace) -> int:
        """Run ``tessera serve``: start Ray (or join ``--address``), serve, wait for Ctrl-C.

        Returns:
            The exit code (0 after Ctrl-C).

        Raises:
            ValueError: A bad option (the `tessera` command prints it and exits with 2).
        """
        from ray import serve

        from engine.runtime import ensure_ray
        from serve.app import run
        from serve.platform_monitor import check_monitor

        options = serve_options(args)
        check_monitor(options["monitor"], options["monitor_options"])  # before Ray starts
        ensure_ray(args.address)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        auth = "bearer token required" if options["token"] else "no token"
        try:
            run(args.model, host=args.host, port=args.port, name=args.name, **options)
            print(
                f"tessera: serving {args.model} at http://{args.host}:{args.port}/ "
                f"({auth}; API docs at /docs). Ctrl-C to stop.",
                file=sys.stderr,
            )
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("tessera: stopping the server", file=sys.stderr)
        finally:
            serve.shutdown()
        return 0


#: The ``serve`` entry point of ``tessera.commands``.
SERVE_COMMAND = ServeCommand()


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Turn the parsed ``serve`` command line into `serve.app.build_app` arguments.

    Example:
        >>> parser = argparse.ArgumentParser(prog="tessera")
        >>> SERVE_COMMAND.add_arguments(parser)
        >>> args = parser.parse_args(["--model", "m", "--batch-wait-ms", "20"])
        >>> serve_options(args)["batch_wait_timeout_s"]
        0.02
    """
    from engine.cli import key_values
    from serve.security import parse_networks

    model_options: dict[str, Any] = {}
    if args.no_pretrained:
        model_options["pretrained"] = False
    if args.weights:
        model_options["weights"] = args.weights
    allow: bool | tuple[str, ...] = bool(args.allow_private_urls)
    if args.allow_network and not args.allow_private_urls:
        allow = parse_networks(args.allow_network)
    options: dict[str, Any] = {
        "device": args.device,
        "num_replicas": args.replicas,
        "gpus_per_replica": args.gpus_per_replica,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_ms / 1000.0,
        "token": args.token or os.environ.get("TESSERA_SERVE_TOKEN") or None,
        "max_request_bytes": int(args.max_request_mb * 2**20),
        "allow_private_urls": allow,
        "monitoring_path": args.monitoring,
        "shadow_model": args.shadow,
        "model_options": model_options or None,
        "monitor": args.monitor,
        "monitor_options": key_values(args.monitor_option, "--monitor-option") or None,
    }
    if args.max_pixels is not None:
        options["max_pixels"] = args.max_pixels
    return options
