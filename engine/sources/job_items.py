"""`JobItems`: the items of one job, listed lazily, never held in one list when large.

A job over a folder tree of a million images must not keep a million `Item` objects in
the driver. `JobItems.survey` lists the input once, counting what a job needs to know up
front (prediction rows, sources, skipped files, the probed videos); every later iteration
lists the input again, one folder at a time (`engine.sources.resolve.iter_resolved`), and
splits its videos with the probes the survey kept. A small job (up to `KEEP_ITEMS`
items), and any job of in-memory images, keeps the list of its survey instead: it is
listed once.

The input is listed again in the process that iterates: the driver for ``predict``, the
session actor (beside the caller, `engine.runtime.near_caller`) for ``predict_detached``,
with relative paths taken from the folder the caller was in.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from engine.jobs import remaining_items
from engine.settings import VideoSettings
from engine.sources.items import Item
from engine.sources.resolve import ResolvedInput, holds_in_memory, iter_resolved
from engine.sources.video_items import iter_expand_videos, renumber_in_memory

#: Items a job keeps in a list after its survey; a larger job lists its input again.
KEEP_ITEMS = 4096
#: Names of the first items, for a session's status.
FIRST_NAMES = 5


@dataclass
class JobItems:
    """The items of a job: iterate for them, in order (each pass lists the input anew).

    Attributes:
        input: The user's input (see `engine.sources.resolve.resolve_input`).
        recursive: Descend into subfolders.
        video: The frame selection that splits videos into segments.
        extra: Items appended after the input's (a platform's media), numbered from 0.
        cwd: The folder relative paths of ``input`` are taken from.
        done: Keys (`engine.jobs.item_keys`) of predictions already made: left out.
        num_items: Items a pass yields (a video segment is one item).
        num_rows: Predictions they produce (one per image, one per selected frame).
        sources: Items per source ("file", "url", a platform's name...).
        datasets: The platform datasets the items come from, sorted.
        first: The names of the first few items.
        skipped: Files of input folders that are not images or videos.
        in_memory: Item index -> RGB array of each in-memory input (the driver's own;
            not sent with the items to a session actor).
        videos: Path -> probed `VideoInfo` of each video.
    """

    input: Any
    recursive: bool
    video: VideoSettings
    extra: list[Item] = field(default_factory=list)
    cwd: str = field(default_factory=os.getcwd)
    done: frozenset[str] = frozenset()
    num_items: int = 0
    num_rows: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    first: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    in_memory: dict[int, np.ndarray] = field(default_factory=dict)
    videos: dict[str, Any] = field(default_factory=dict)
    _kept: list[Item] | None = None

    @classmethod
    def survey(
        cls,
        input: Any,  # noqa: A002
        recursive: bool,
        video: VideoSettings,
        extra: Iterable[Item] = (),
        done: Iterable[str] = (),
        keep_items: int | None = None,
        cwd: str | None = None,
    ) -> JobItems:
        """List the input once: count it, probe its videos, keep it when small.

        Args:
            input: The user's input.
            recursive: Descend into subfolders.
            video: The frame selection.
            extra: Items after the input's (a platform's media).
            done: Keys of predictions already made, left out.
            keep_items: Keep the list up to this many items (default `KEEP_ITEMS`).
            cwd: The folder relative paths are taken from (default: this process's).

        Raises:
            TypeError: An input of an unsupported type (see `resolve_input`).
        """
        job = cls(input, recursive, video, list(extra), cwd or os.getcwd(), frozenset(done))
        found = ResolvedInput()
        renumbered: dict[int, int] = {}
        keep = holds_in_memory(input)
        keep_items = KEEP_ITEMS if keep_items is None else keep_items
        kept: list[Item] | None = []
        sources: collections.Counter[str] = collections.Counter()
        datasets: set[str] = set()
        for item in job._pass(found, renumbered):
            job.num_items += 1
            job.num_rows += item.num_rows
            sources[item.source] += 1
            if item.dataset:
                datasets.add(item.dataset)
            if len(job.first) < FIRST_NAMES:
                job.first.append(item.name)
            if kept is not None:
                kept.append(item)
                if len(kept) > keep_items and not keep:
                    kept = None
        job.sources, job.datasets = dict(sources), sorted(datasets)
        job.skipped = found.skipped
        job.in_memory = renumber_in_memory(found.in_memory, renumbered)
        job._kept = kept
        return job

    def __iter__(self) -> Iterator[Item]:
        if self._kept is not None:
            return iter(self._kept)
        return self._pass(ResolvedInput(), {})

    def __len__(self) -> int:
        return self.num_items

    @property
    def listed_once(self) -> bool:
        """True when the items are kept in a list (a small job): no pass lists them again."""
        return self._kept is not None

    def origins(self) -> dict[str, Any]:
        """Where the items came from, for an upload that mirrors its sources."""
        return {"datasets": list(self.datasets), "sources": sorted(self.sources)}

    def without(self, done: Iterable[str]) -> JobItems:
        """These items less the predictions whose keys are in ``done`` (a resumed job)."""
        return JobItems.survey(
            self.input,
            self.recursive,
            self.video,
            self.extra,
            done=done,
            keep_items=None if self.listed_once else -1,
            cwd=self.cwd,
        )

    def _pass(self, found: ResolvedInput, renumbered: dict[int, int]) -> Iterator[Item]:
        """One listing of the input: resolved, the extra items after it, videos split."""
        counted = _Counted(iter_resolved(self.input, self.recursive, found, self.cwd))
        raw = _chain_renumbered(counted, self.extra)
        items = iter_expand_videos(raw, self.video, self.videos, renumbered)
        if not self.done:
            yield from items
            return
        for item in items:
            yield from remaining_items([item], self.done)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the in-memory arrays (the driver keeps them).

        Kept items travel without the input too: their pixels are in them.
        """
        state = dict(self.__dict__)
        state["in_memory"] = {}
        if state["_kept"] is not None:
            state["input"] = None
        return state


class _Counted:
    """An iterator that counts what it yields."""

    def __init__(self, items: Iterator[Item]) -> None:
        self._items, self.count = items, 0

    def __iter__(self) -> Iterator[Item]:
        for item in self._items:
            self.count += 1
            yield item


def _chain_renumbered(counted: _Counted, extra: list[Item]) -> Iterator[Item]:
    """The counted items, then ``extra`` numbered on from them."""
    yield from counted
    for offset, item in enumerate(extra):
        yield replace(item, index=counted.count + offset)
