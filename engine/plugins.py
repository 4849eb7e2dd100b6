"""The plug-in registry: platforms, model clients and CLI commands, found by entry points.

The engine knows no platform and no server by name. Each plugs in through a Python entry
point of this distribution or of any other installed one (a third party adds a platform
with ``pip install``):

- ``tessera.platforms``: a `Platform` (inputs by platform ids and the fetcher of their
  media, a local dataset layout, annotation formats, local exporters, an uploader);
- ``tessera.clients``: a `ClientFactory` that `engine.connect` asks, in turn, whether it
  takes a target (a URL, an application name);
- ``tessera.commands``: a `Command`, one ``tessera`` subcommand.

Entry points are read once per process and cached; a plug-in that fails to load is
reported by name when it is asked for, and never hides the others.

Example:
    >>> from engine import plugins
    >>> sorted(plugins.export_formats())             # doctest: +SKIP
    ['coco', 'jsonl', 'parquet']
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engine.client import ModelClient
    from engine.detections import Detections
    from engine.prediction import Prediction

logger = logging.getLogger(__name__)

#: Entry-point group of platforms.
PLATFORM_GROUP = "tessera.platforms"
#: Entry-point group of `engine.connect` clients.
CLIENT_GROUP = "tessera.clients"
#: Entry-point group of ``tessera`` subcommands.
COMMAND_GROUP = "tessera.commands"


class PluginError(ValueError):
    """An unknown plug-in or format; the message lists the installed ones."""


class LocalDatasetError(ValueError):
    """A folder has a platform's local layout, but the platform cannot read it.

    Attributes:
        platform: The platform whose layout it is.
    """

    def __init__(self, platform: Platform, message: str) -> None:
        super().__init__(message)
        self.platform = platform


# --------------------------------------------------------------------------- interfaces
@dataclass(frozen=True)
class InputRef:
    """One image or video a platform input (or a local dataset) stands for.

    Attributes:
        name: The display name (the image's file name on the platform).
        url: Where the media lives, in the platform's own scheme (``<scheme>://...``);
            fetched by the platform's fetcher in the decode tasks when there is no path.
        path: A local file, when the media is (or was downloaded) on disk.
        dataset: The dataset the media belongs to, as the platform names it.
        video: True for a video, predicted with the frame options.
    """

    name: str
    url: str | None = None
    path: str | None = None
    dataset: str | None = None
    video: bool = False


@dataclass
class PlatformInputs:
    """What a platform's ids resolve to.

    Attributes:
        refs: The media, in the order they are predicted.
        fetch: Downloads the bytes of a media URL (``refs[i].url``), picklable: it runs in
            the decode tasks, under the job's rate limit.
        sources: What the inputs came from (e.g. project and dataset ids), handed to an
            upload of the same job (to mirror the source when creating a destination).
    """

    refs: list[InputRef] = field(default_factory=list)
    fetch: Callable[[str], bytes] | None = None
    sources: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class AnnotationFormat(Protocol):
    """A platform's image annotation JSON: pure functions, no Ray."""

    def encode(self, prediction: Prediction) -> dict[str, Any]:
        """Return ``prediction`` as the platform's annotation JSON."""

    def decode(self, annotation: dict[str, Any], class_names: list[str]) -> Detections:
        """Read the platform's annotation JSON back into `Detections`."""


@runtime_checkable
class VideoAnnotationFormat(Protocol):
    """A platform's video annotation JSON (tracked objects over frames): pure functions."""

    def encode(self, annotation: Any) -> dict[str, Any]:
        """Return a `engine.tracking.VideoAnnotation` as the platform's JSON."""

    def decode(self, data: dict[str, Any], class_names: list[str], **fields: Any) -> Any:
        """Read the platform's JSON back into a `engine.tracking.VideoAnnotation`."""

    def file_name(self, annotation: Any) -> str:
        """The file name the platform gives this video's annotation."""


@runtime_checkable
class Exporter(Protocol):
    """A local export, written as predictions stream."""

    def write(self, prediction: Prediction) -> None:
        """Write the next prediction."""

    def close(self) -> dict[str, Any]:
        """Finish the files and return a summary (files, objects, errors)."""


#: Opens an exporter: ``(out directory, class names, task) -> Exporter``.
ExporterFactory = Callable[[Path, list[str], str], Exporter]


@runtime_checkable
class UploadSink(Protocol):
    """A running upload of one job: takes predictions as they come, then finishes."""

    def write(self, predictions: Sequence[Prediction]) -> None:
        """Take the next predictions, in order."""

    def close(self) -> dict[str, Any]:
        """Wait for the upload and return its summary (delivered, dead, journal...)."""


@runtime_checkable
class Uploader(Protocol):
    """What the engine needs of an uploader (`connectors.base.Connector` is one)."""

    name: str

    def check_mode(self, mode: str) -> None:
        """Raise ValueError when the uploader does not support ``mode``."""

    def validate(self) -> None:
        """Raise when the uploader cannot run (a missing credential), before any work."""

    def check_options(self, mode: str, options: dict[str, Any]) -> None:
        """Raise ValueError on a bad or missing ``upload_options`` entry, before any work."""

    def start_upload(
        self,
        job_id: str,
        mode: str,
        class_names: list[str],
        task: str,
        options: dict[str, Any],
        sources: dict[str, Any],
    ) -> UploadSink:
        """Prepare the destination and start uploading in the background."""


@dataclass
class MonitoredImage:
    """One answered image, as a deployment monitor receives it (`Monitor`).

    Attributes:
        key: Names this image for good (``"<request id>:<position>"``); a monitor sends
            it at most once, and a retry of it is recognised by the platform.
        prediction: The model's prediction (original-image pixels).
        latency_s: The model's time for this image, in seconds.
        timestamp: When the image was answered (seconds since the epoch); stays the same
            on every retry.
        image: The image as it was received (encoded bytes), or None.
        content_type: The bytes' media type (``image/png``...), or None.
        source: Where the image came from (the server's name for it), or None.
        tags: Free tags for the platform.
        shadow: The shadow model's prediction of the same image, or None.
        shadow_latency_s: The shadow model's time, in seconds, or None.
    """

    key: str
    prediction: Prediction
    latency_s: float
    timestamp: float
    image: bytes | None = None
    content_type: str | None = None
    source: str | None = None
    tags: list[str] = field(default_factory=list)
    shadow: Prediction | None = None
    shadow_latency_s: float | None = None


@runtime_checkable
class MonitorSink(Protocol):
    """A running deployment monitor: takes images without ever blocking, sends them later."""

    def submit(self, record: MonitoredImage) -> bool:
        """Queue ``record`` at once; False when the queue was full (counted, dead-lettered)."""

    def stats(self) -> dict[str, Any]:
        """Counts so far: ``queued``, ``delivered``, ``dead``, ``overflow``, ``pending``."""

    def close(self, timeout: float | None = None) -> dict[str, Any]:
        """Send what is queued (waiting up to ``timeout`` s), stop, and return `stats`."""


@runtime_checkable
class Monitor(Protocol):
    """A platform's monitoring of a deployment (``tessera serve --monitor NAME``)."""

    name: str

    def validate(self) -> None:
        """Raise ValueError when the monitor cannot run (a missing credential), at once."""

    def start_monitor(
        self,
        class_names: list[str],
        task: str,
        shadow_class_names: list[str] | None = None,
        options: dict[str, Any] | None = None,
    ) -> MonitorSink:
        """Start sending in the background; the returned sink never blocks its caller.

        ``options`` None: the options the monitor was built with (`Platform.monitor`).
        """


class Platform:
    """A labeling platform (or a family of local formats) as a plug-in.

    Subclass it and override what the platform provides; every part is optional. Register
    an instance under the ``tessera.platforms`` entry-point group:

    .. code-block:: toml

        [project.entry-points."tessera.platforms"]
        acme = "acme_tessera.plugin:PLATFORM"

    Attributes:
        name: The platform's name: ``to=NAME`` and ``format=NAME``-style lookups use it;
            also the ``source`` of its items' Predictions.
        title: How messages name it ("Acme"); the name when not set.
        input_keywords: Keywords `predict` takes for this platform's ids, plural form ->
            help text (``{"project_ids": "a project to predict"}``); the singular
            (``project_id``) is accepted too, and the CLI gets ``--project-id``.
        url_scheme: The scheme of this platform's media URLs (``acme`` for
            ``acme://images/1``); `Prediction.load_image` fetches such URLs through
            `fetcher`.
        default_annotation: This platform's image format is `Prediction.annotation`.
    """

    name: str = ""
    title: str = ""
    input_keywords: Mapping[str, str] = {}
    url_scheme: str | None = None
    default_annotation: bool = False

    def parse_ids(self, keyword: str, value: Any) -> list[Any]:
        """Check the value of one input keyword; return its ids as a list.

        The default takes an int >= 0 or a list of them.
        """
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        for ident in values:
            if isinstance(ident, bool) or not isinstance(ident, int) or ident < 0:
                raise ValueError(
                    f"{keyword} must be a {self.title or self.name} id (an int >= 0), got {ident!r}"
                )
        return [int(i) for i in values]

    def cli_id(self, text: str) -> Any:
        """Read one id given on the command line (``--project-id 12``); the default an int.

        Raises:
            ValueError: ``text`` is not an id of this platform.
        """
        if not text.isdigit():
            raise ValueError(f"not a {self.title or self.name} id (an int >= 0): {text!r}")
        return int(text)

    def resolve_inputs(self, ids: dict[str, list[Any]]) -> PlatformInputs:
        """List the media that ``ids`` (plural keyword -> ids) stand for.

        Raises:
            PluginError: The platform declares input keywords but does not resolve them.
        """
        raise PluginError(
            f"platform {self.name!r} declares the inputs {', '.join(ids) or 'none'} "
            "but does not resolve them (its plug-in lacks resolve_inputs)"
        )

    def fetcher(self) -> Callable[[str], bytes]:
        """A function that downloads one media URL of `url_scheme`.

        Raises:
            PluginError: The platform declares a URL scheme but has no fetcher for it.
        """
        raise PluginError(
            f"platform {self.name!r} has no media fetcher for {self.url_scheme or 'its'}:// URLs "
            "(its plug-in lacks fetcher)"
        )

    def read_local(self, directory: Path) -> list[InputRef] | None:
        """The media of a local dataset in this platform's layout, or None if not one.

        Raises ValueError when the layout is this platform's but cannot be read.
        """
        return None

    def read_local_ground_truth(self, directory: Path) -> Iterable[Prediction] | None:
        """The labelled images of a local dataset in this platform's layout, or None.

        Each image is a `Prediction` of its labels (scores ignored), named as the image
        file (`engine.evaluate` matches predictions to it by that name). Raises
        ValueError when the layout is this platform's but cannot be read.
        """
        return None

    def annotation_formats(self) -> Mapping[str, AnnotationFormat]:
        """Image annotation formats by name (usually one, named after the platform)."""
        return {}

    def video_annotation_formats(self) -> Mapping[str, VideoAnnotationFormat]:
        """Video annotation formats by name."""
        return {}

    def exporters(self) -> Mapping[str, ExporterFactory]:
        """Local export formats (``format=NAME``) by name."""
        return {}

    def uploader(self, **options: Any) -> Uploader | None:
        """Build the uploader (``to=NAME``) with its options, or None when there is none."""
        return None

    def monitor(self, **options: Any) -> Monitor | None:
        """Build the deployment monitor (``--monitor NAME``) with its options, or None.

        ``options`` are every ``--monitor-option`` (the platform's, and the runtime's queue
        and rate settings); ``start_monitor`` without options uses them.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


@runtime_checkable
class ClientFactory(Protocol):
    """Builds the `engine.client.ModelClient` for targets it recognises."""

    name: str

    def accepts(self, target: str) -> bool:
        """True when this factory connects to ``target`` (a URL, an application name)."""

    def connect(self, target: str, token: str | None = None, **options: Any) -> ModelClient:
        """Connect and return the client."""


@runtime_checkable
class Command(Protocol):
    """One ``tessera`` subcommand."""

    name: str
    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's arguments."""

    def run(self, args: argparse.Namespace) -> int:
        """Run it; return the exit code."""


# --------------------------------------------------------------------------- discovery
@dataclass
class _Group:
    loaded: dict[str, Any]
    failed: dict[str, str]


@functools.cache
def _group(group: str) -> _Group:
    loaded: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for entry in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        if entry.name in loaded:
            continue  # the first installed distribution wins
        try:
            loaded[entry.name] = entry.load()
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not hide the others
            failed[entry.name] = f"{entry.value}: {type(exc).__name__}: {exc}"
            logger.warning("plug-in %s of %s failed to load: %s", entry.name, group, exc)
    return _Group(loaded, failed)


def refresh() -> None:
    """Forget the entry points read so far (after installing a plug-in in this process)."""
    _group.cache_clear()


def _installed(kind: str, names: Iterable[str], group: str) -> str:
    listed = ", ".join(sorted(names)) or "none"
    message = f"installed {kind}: {listed}"
    failed = _group(group).failed
    if failed:
        message += "; failed to load: " + "; ".join(f"{n} ({e})" for n, e in failed.items())
    return message


def platforms() -> dict[str, Platform]:
    """Every installed platform, by name."""
    return {p.name or n: p for n, p in _group(PLATFORM_GROUP).loaded.items()}


def platform(name: str) -> Platform:
    """The platform registered as ``name`` (case-insensitive).

    Raises:
        PluginError: None is; the message lists the installed platforms.
    """
    found = platforms().get(str(name).lower())
    if found is None:
        kind = "platforms"
        raise PluginError(
            f"unknown platform {name!r}; {_installed(kind, platforms(), PLATFORM_GROUP)}"
        )
    return found


# --------------------------------------------------------------------------- inputs
def input_keywords() -> dict[str, tuple[Platform, str]]:
    """Every platform input keyword (singular and plural) -> (platform, plural keyword).

    Raises:
        PluginError: Two platforms claim the same keyword.
    """
    found: dict[str, tuple[Platform, str]] = {}
    for plugin in platforms().values():
        for plural in plugin.input_keywords:
            singular = plural[:-1] if plural.endswith("s") else plural
            for key in dict.fromkeys((singular, plural)):
                if key in found and found[key][0] is not plugin:
                    raise PluginError(
                        f"input keyword {key!r} is claimed by platforms "
                        f"{found[key][0].name!r} and {plugin.name!r}"
                    )
                found[key] = (plugin, plural)
    return found


def pop_platform_inputs(options: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """Take the platform id keywords out of ``options``.

    Returns:
        Platform name -> plural keyword -> the ids, checked by the platform.
    """
    known = input_keywords() if options else {}
    found: dict[str, dict[str, list[Any]]] = {}
    for key in [k for k in options if k in known]:
        plugin, plural = known[key]
        ids = plugin.parse_ids(key, options.pop(key))
        found.setdefault(plugin.name, {}).setdefault(plural, []).extend(ids)
    return found


def resolve_platform_inputs(ids: dict[str, dict[str, list[Any]]]) -> list[PlatformInputs]:
    """Ask each platform for the media its ids stand for, in the order given."""
    return [platform(name).resolve_inputs(keywords) for name, keywords in ids.items()]


def platform_for_url(url: str) -> Platform | None:
    """The platform whose media URLs have the scheme of ``url``, or None."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        return None
    for plugin in platforms().values():
        if plugin.url_scheme and plugin.url_scheme == scheme.lower():
            return plugin
    return None


def read_local_dataset(directory: Path) -> tuple[Platform, list[InputRef]] | None:
    """The platform whose local layout ``directory`` has, with its media; None if none.

    Raises:
        LocalDatasetError: The layout is a platform's, but that platform cannot read it.
    """
    for plugin in platforms().values():
        try:
            refs = plugin.read_local(directory)
        except ValueError as exc:
            raise LocalDatasetError(plugin, str(exc)) from exc
        if refs is not None:
            return plugin, refs
    return None


# --------------------------------------------------------------------------- formats
def annotation_formats() -> dict[str, AnnotationFormat]:
    """Every image annotation format, by name."""
    found: dict[str, AnnotationFormat] = {}
    for plugin in platforms().values():
        found.update(plugin.annotation_formats())
    return found


def annotation_format(name: str | None = None) -> AnnotationFormat:
    """The image annotation format ``name``; None gives the default one.

    Raises:
        PluginError: No such format (or no default); the message lists the installed ones.
    """
    if name is None:
        for plugin in platforms().values():
            if plugin.default_annotation and plugin.annotation_formats():
                return next(iter(plugin.annotation_formats().values()))
        raise PluginError(
            "no default annotation format is installed; "
            + _installed("annotation formats", annotation_formats(), PLATFORM_GROUP)
        )
    found = annotation_formats().get(name)
    if found is None:
        raise PluginError(
            f"unknown annotation format {name!r}; "
            + _installed("annotation formats", annotation_formats(), PLATFORM_GROUP)
        )
    return found


def video_annotation_formats() -> dict[str, VideoAnnotationFormat]:
    """Every video annotation format, by name."""
    found: dict[str, VideoAnnotationFormat] = {}
    for plugin in platforms().values():
        found.update(plugin.video_annotation_formats())
    return found


def video_annotation_format(name: str | None = None) -> VideoAnnotationFormat:
    """The video annotation format ``name``; None gives the default platform's."""
    if name is None:
        for plugin in platforms().values():
            if plugin.default_annotation and plugin.video_annotation_formats():
                return next(iter(plugin.video_annotation_formats().values()))
        raise PluginError(
            "no default video annotation format is installed; "
            + _installed("video formats", video_annotation_formats(), PLATFORM_GROUP)
        )
    found = video_annotation_formats().get(name)
    if found is None:
        raise PluginError(
            f"unknown video annotation format {name!r}; "
            + _installed("video formats", video_annotation_formats(), PLATFORM_GROUP)
        )
    return found


def exporters() -> dict[str, ExporterFactory]:
    """Every local export format (``format=``), by name."""
    found: dict[str, ExporterFactory] = {}
    for plugin in platforms().values():
        found.update(plugin.exporters())
    return found


def export_formats() -> list[str]:
    """The names ``format=`` takes, sorted."""
    return sorted(exporters())


def exporter(name: str) -> ExporterFactory:
    """The exporter factory of format ``name``.

    Raises:
        PluginError: No such format; the message lists the installed ones.
    """
    found = exporters().get(name)
    if found is None:
        raise PluginError(
            f"unknown format {name!r}; valid formats: {', '.join(export_formats()) or 'none'}"
        )
    return found


def uploader_names() -> list[str]:
    """The platforms that have an uploader (``to=``), sorted."""
    return sorted(n for n, p in platforms().items() if type(p).uploader is not Platform.uploader)


def uploader(name: str, **options: Any) -> Uploader:
    """Build the uploader of platform ``name`` (``to=name``).

    Raises:
        PluginError: No platform of that name has an uploader; lists those that do.
    """
    built = platforms().get(str(name).lower())
    made = built.uploader(**options) if built is not None else None
    if made is None:
        raise PluginError(
            f"unknown connector {name!r}; known connectors: {', '.join(uploader_names()) or 'none'}"
        )
    return made


def monitor_names() -> list[str]:
    """The platforms that monitor deployments (``--monitor``), sorted."""
    return sorted(n for n, p in platforms().items() if type(p).monitor is not Platform.monitor)


def monitor(name: str, **options: Any) -> Monitor:
    """Build the deployment monitor of platform ``name`` (``--monitor name``).

    Raises:
        PluginError: No platform of that name monitors deployments; lists those that do.
    """
    built = platforms().get(str(name).lower())
    made = built.monitor(**options) if built is not None else None
    if made is None:
        raise PluginError(
            f"unknown monitor {name!r}; platforms that monitor deployments: "
            f"{', '.join(monitor_names()) or 'none'}"
        )
    return made


# --------------------------------------------------------------------------- clients, commands
def client_factories() -> dict[str, ClientFactory]:
    """Every installed `engine.connect` client factory, by entry-point name."""
    return dict(_group(CLIENT_GROUP).loaded)


def client_for(target: str) -> ClientFactory:
    """The first client factory (by name) that accepts ``target``.

    Raises:
        PluginError: None does; the message lists the installed factories.
    """
    for factory in client_factories().values():
        if factory.accepts(target):
            return factory
    raise PluginError(
        f"no installed client connects to {target!r}; "
        + _installed("clients", client_factories(), CLIENT_GROUP)
    )


def commands() -> dict[str, Command]:
    """Every installed ``tessera`` subcommand, by name."""
    return {getattr(c, "name", n): c for n, c in _group(COMMAND_GROUP).loaded.items()}
