"""The layout of a local Supervisely project: meta.json and its (nested) datasets.

Layout (see FORMATS.md): ``<proj>/meta.json``, ``<proj>/<dataset>/img/<name>``,
``<proj>/<dataset>/ann/<name>.json`` and nested datasets under ``<dataset>/datasets/``,
or directly in the parent's folder (``<dataset>/<nested>/img/``, as some exports write
them), the parent holding images of its own or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from connectors.formats.names import PNG_SUFFIX

META_FILE = "meta.json"
NESTED_DIR = "datasets"
#: Folders of a dataset that hold its items' files, never a nested dataset.
DATASET_PARTS = frozenset({"img", "ann", "img_info", "meta", "masks_human", "masks_machine"})
#: How deep below the project nested datasets are looked for.
MAX_NESTING = 8
#: Image suffixes that become ".png" when an image is written as PNG under its name.
_IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".mpo"}
)


@dataclass
class SuperviselyProject:
    """A local Supervisely project as found on disk.

    Attributes:
        path: The project directory.
        meta: The parsed meta.json.
        datasets: (dataset name, [(image path, annotation path or None), ...]) pairs,
            sorted by name; nested datasets are named "parent/child" and follow their
            parent. Image lists hold every non-hidden file of ``img/``, sorted.

    Example:
        >>> project = read_project("my_project")             # doctest: +SKIP
        >>> [name for name, _ in project.datasets]            # doctest: +SKIP
        ['ds1', 'ds1/part2', 'ds2']

    """

    path: Path
    meta: dict[str, Any]
    datasets: list[tuple[str, list[tuple[Path, Path | None]]]] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        """Number of image files over all datasets."""
        return sum(len(images) for _, images in self.datasets)


def has_project_layout(path: str | Path) -> bool:
    """Tell whether a directory is laid out like a Supervisely project, without reading meta.

    Args:
        path: A directory.

    Returns:
        True when it has a meta.json file and at least one dataset folder with ``img/``
        (a nested one too).

    Example:
        >>> has_project_layout("my_project")                  # doctest: +SKIP
        True

    """
    path = Path(path)
    if not (path / META_FILE).is_file():
        return False
    return any(_holds_dataset(d, MAX_NESTING) for d in _subdirs(path))


def is_supervisely_project(path: str | Path) -> bool:
    """Tell whether a directory is a local Supervisely project.

    Args:
        path: A directory.

    Returns:
        True when it has the project layout (see `has_project_layout`) and its meta.json
        is a JSON object with a "classes" list.

    Example:
        >>> is_supervisely_project("my_project")              # doctest: +SKIP
        True

    """
    if not has_project_layout(path):
        return False
    try:
        read_meta(Path(path) / META_FILE)
    except ValueError:
        return False
    return True


def read_meta(meta_path: str | Path) -> dict[str, Any]:
    """Read and check a project's meta.json.

    Args:
        meta_path: Path of the meta.json file.

    Returns:
        The parsed JSON object.

    Raises:
        ValueError: The file cannot be read, is not JSON, or has no "classes" list; the
            message names the file.

    Example:
        >>> read_meta("my_project/meta.json")["classes"][0]["title"]   # doctest: +SKIP
        'car'

    """
    try:
        meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: malformed Supervisely meta.json: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list):
        raise ValueError(f'{meta_path}: malformed Supervisely meta.json: no "classes" list')
    return meta


def read_project(path: str | Path) -> SuperviselyProject:
    """Read a local Supervisely project: its meta and every dataset's images.

    Args:
        path: The project directory.

    Returns:
        The project, with nested datasets included as "parent/child".

    Raises:
        ValueError: meta.json is missing or malformed (the message names the file).

    Example:
        >>> project = read_project("my_project")              # doctest: +SKIP
        >>> project.num_images                                # doctest: +SKIP
        42

    """
    path = Path(path)
    project = SuperviselyProject(path=path, meta=read_meta(path / META_FILE))
    for dataset_dir in _subdirs(path):
        _collect_datasets(dataset_dir, dataset_dir.name, project.datasets)
    return project


def _collect_datasets(
    dataset_dir: Path,
    name: str,
    out: list[tuple[str, list[tuple[Path, Path | None]]]],
    depth: int = MAX_NESTING,
) -> None:
    img_dir = dataset_dir / "img"
    if img_dir.is_dir():
        ann_dir = dataset_dir / "ann"
        images = []
        for image in sorted(p for p in img_dir.iterdir() if _visible(p) and p.is_file()):
            ann = ann_dir / f"{image.name}.json"
            images.append((image, ann if ann.is_file() else None))
        out.append((name, images))
    if depth <= 0:
        return
    for child in _nested_datasets(dataset_dir):
        _collect_datasets(child, f"{name}/{child.name}", out, depth - 1)


def _nested_datasets(dataset_dir: Path) -> list[Path]:
    """The datasets nested in one: under ``datasets/``, and beside its ``img/``."""
    beside = [
        d
        for d in _subdirs(dataset_dir)
        if d.name not in DATASET_PARTS and d.name != NESTED_DIR and _holds_dataset(d, MAX_NESTING)
    ]
    return _subdirs(dataset_dir / NESTED_DIR) + beside


def _holds_dataset(folder: Path, depth: int) -> bool:
    """True when ``folder`` or a folder nested below it (``depth`` levels) has ``img/``."""
    if (folder / "img").is_dir():
        return True
    if depth <= 0:
        return False
    children = _subdirs(folder / NESTED_DIR) + [
        d for d in _subdirs(folder) if d.name not in DATASET_PARTS and d.name != NESTED_DIR
    ]
    return any(_holds_dataset(child, depth - 1) for child in children)


def _subdirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if _visible(p) and p.is_dir())


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


# ---------------------------------------------------------------------- writing a project
def png_file_name(name: str) -> str:
    """Return ``name`` for an image written as PNG: its image suffix becomes ".png".

    Args:
        name: A file name.

    Returns:
        ``"a.jpg"`` -> ``"a.png"``; a name without an image suffix gets ".png" added.

    Example:
        >>> png_file_name("array_3"), png_file_name("photo.JPG")
        ('array_3.png', 'photo.png')

    """
    path = PurePosixPath(name)
    if path.suffix.lower() == PNG_SUFFIX:
        return name
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return path.stem + PNG_SUFFIX
    return name + PNG_SUFFIX


def dataset_dir(project_dir: str | Path, dataset: str | None) -> Path:
    """Return the folder of a dataset inside a project; "a/b" is ``a/datasets/b``.

    Args:
        project_dir: The project folder.
        dataset: The dataset name, "parent/child" for a nested one; None or "" is "ds0".
            Empty, "." and ".." parts are dropped.

    Returns:
        The dataset folder (its images go in ``img/``, its annotations in ``ann/``).

    Example:
        >>> dataset_dir("proj", "a/b").as_posix()
        'proj/a/datasets/b'

    """
    parts = [
        p for p in str(dataset or "").replace("\\", "/").split("/") if p not in ("", ".", "..")
    ]
    out = Path(project_dir)
    for depth, part in enumerate(parts or ["ds0"]):
        out = out / part if depth == 0 else out / "datasets" / part
    return out
