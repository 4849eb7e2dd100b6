"""Multi-object tracking of video predictions with boxmot, and tracked-video exports.

One module per job:

- `engine.tracking.adapter`: boxmot's arrays (`to_boxmot`, `from_boxmot`) and trackers by
  name (`make_tracker`, `TRACKERS`);
- `engine.tracking.loop`: one video's predictions through one tracker
  (`track_predictions`);
- `engine.tracking.annotation`: the tracked video (`VideoAnnotation`), as MOT text and as
  the installed platforms' video formats;
- `engine.tracking.rendering`: frames drawn with their tracks (`draw_tracks`,
  `write_tracked_video`);
- `engine.tracking.actors`: every video of a job through its own tracker actor (Ray;
  not imported here).

boxmot, torch and PyAV are imported lazily inside the functions that need them, so
importing this package stays cheap.

Example:
    >>> tracker = make_tracker("bytetrack", frame_rate=30)            # doctest: +SKIP
    >>> frames = list(track_predictions(predictions, tracker))        # doctest: +SKIP
    >>> video = VideoAnnotation.from_predictions(frames, fps=30)      # doctest: +SKIP
    >>> video.save("out")                                             # doctest: +SKIP
    {'annotation': PosixPath('out/clip.mp4.json'), 'mot': PosixPath('out/clip.txt')}
"""

from __future__ import annotations

from engine.tracking.adapter import (
    TRACKERS,
    check_tracker,
    from_boxmot,
    make_tracker,
    to_boxmot,
)
from engine.tracking.annotation import VideoAnnotation
from engine.tracking.loop import track_predictions
from engine.tracking.rendering import draw_tracks, write_tracked_video

__all__ = [
    "TRACKERS",
    "check_tracker",
    "VideoAnnotation",
    "draw_tracks",
    "from_boxmot",
    "make_tracker",
    "to_boxmot",
    "track_predictions",
    "write_tracked_video",
]
