"""The "parquet" export of a job: Ray Data writes the result blocks where they live.

The exporter keeps references to the job's prediction blocks (Arrow tables in the object
store, no pixels) and, at the end, has Ray Data write them as Parquet files, so on a
cluster the rows never pass through the driver. The class names and task go beside them
in ``classes.json``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from engine.prediction import Prediction

__all__ = ["BlockParquetExporter"]


class BlockParquetExporter:
    """``<out>/parquet/*.parquet`` and ``<out>/classes.json``, written from result blocks.

    Args:
        out_dir: The export folder.
        class_names: The model's classes.
        task: The model's task.

    Example:
        >>> exporter = BlockParquetExporter(Path("out"), ["car"], "detection")  # doctest: +SKIP
        >>> exporter.write_block(block_ref, rows=8)                             # doctest: +SKIP
        >>> exporter.close()["files"]                                           # doctest: +SKIP
        ['0_000000_000000.parquet']
    """

    def __init__(self, out_dir: Path, class_names: list[str], task: str) -> None:
        self._folder = Path(out_dir) / "parquet"
        self._classes, self._task = list(class_names), task
        self._refs: list[Any] = []
        self._rows = 0

    def write_block(self, ref: Any, rows: int) -> None:
        """Take one finished block (an Arrow table in the object store) by reference."""
        self._refs.append(ref)
        self._rows += rows

    def write(self, prediction: Prediction) -> None:
        """Not used: this export takes blocks (`write_block`), never single predictions."""
        raise TypeError("the Parquet export takes blocks (write_block), not predictions")

    def close(self) -> dict[str, Any]:
        """Write the blocks and ``classes.json``; return the folder, files and row count.

        The files are written into a fresh folder that then replaces ``parquet/``, so the
        folder holds exactly the blocks this exporter took, whatever an earlier run (one
        killed and resumed, `engine.jobs`) left there.
        """
        import ray

        fresh = self._folder.with_name(f".{self._folder.name}-{uuid.uuid4().hex[:8]}")
        fresh.mkdir(parents=True)
        if self._refs:
            ray.data.from_arrow_refs(self._refs).write_parquet(str(fresh))
        if self._folder.exists():
            shutil.rmtree(self._folder)
        fresh.rename(self._folder)
        (self._folder.parent / "classes.json").write_text(
            json.dumps({"class_names": self._classes, "task": self._task})
        )
        files = sorted(p.name for p in self._folder.glob("*.parquet"))
        self._refs = []
        return {"folder": str(self._folder), "files": files, "rows": self._rows}
