"""A closed model says so (issue 17: `predict` after `model.close()` raised a
ZeroDivisionError from the pipeline)."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.models.reference import ColorBoxDetector


def test_every_call_on_a_closed_model_says_it_is_closed(ray_session):
    model = engine.deploy(ColorBoxDetector())
    image = np.zeros((32, 32, 3), np.uint8)
    assert len(model.predict(image, progress=False)) == 1
    model.close()
    assert model.closed and model.num_workers == 0
    for call, run in (
        ("predict", lambda: model.predict(image, progress=False)),
        ("predict", lambda: model.predict([image], stream=True, progress=False)),
        ("predict_detached", lambda: model.predict_detached([image])),
        ("track", lambda: model.track("clip.mp4")),
        ("resume", lambda: model.resume("no-such-job")),
        ("resources", model.resources),
    ):
        with pytest.raises(RuntimeError, match=rf"{call}\(\): the model .* is closed"):
            run()
    model.close()  # closing twice is harmless
