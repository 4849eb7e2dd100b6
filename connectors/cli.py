"""``tessera upload --resume JOB``: a plug-in subcommand (entry point ``tessera.commands``)."""

from __future__ import annotations

import argparse
import json

from connectors.journal import Journal

__all__ = ["UPLOAD_COMMAND", "UploadCommand"]


class UploadCommand:
    """Resume an upload job from its journal: send exactly what was not delivered."""

    name = "upload"
    help = "resume an upload job from its journal"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """``--resume JOB`` and ``--journal-dir``."""
        parser.add_argument("--resume", required=True, metavar="JOB", help="the job id to resume")
        parser.add_argument("--journal-dir", default=None, help="where journals are kept")

    def run(self, args: argparse.Namespace) -> int:
        """Resume the job; exit 1 when items are still undelivered (dead), else 0."""
        import ray

        from connectors import get_connector
        from connectors.runtime import UploadJob
        from engine.runtime import ensure_ray

        with Journal.load(args.resume, args.journal_dir) as journal:
            meta = journal.meta
        started_here = not ray.is_initialized()
        ensure_ray(None)
        try:
            connector = get_connector(meta["connector"])
            connector.validate()
            job = UploadJob.resume(args.resume, connector, root=args.journal_dir)
            summary = job.finish()
        finally:
            if started_here:
                ray.shutdown()
        print(json.dumps(summary, default=str))
        return 1 if summary.get("dead") else 0


#: The instance the entry point names.
UPLOAD_COMMAND = UploadCommand()
