from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine import masks as mask_utils
from engine.detections import Detections
from engine.prediction import Prediction
from engine.visualize import class_color, draw_prediction

H, W = 60, 80
RED = (255, 0, 0)


def _prediction(
    boxes=((10, 20, 50, 40),),
    class_idxs=None,
    masks=None,
    keypoints=None,
    image=None,
    **kwargs,
) -> Prediction:
    n = len(boxes)
    detections = Detections(
        xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.full(n, 0.87, np.float32),
        class_idxs=np.zeros(n, np.int64) if class_idxs is None else np.asarray(class_idxs),
        masks_rle=None if masks is None else mask_utils.encode_masks(masks),
        keypoints=keypoints,
    )
    kwargs.setdefault("name", "x.png")
    return Prediction(
        detections=detections,
        class_names=["car", "person"],
        height=H,
        width=W,
        image=np.zeros((H, W, 3), np.uint8) if image is None else image,
        **kwargs,
    )


def test_outline_has_color_and_inside_stays_black_without_fill():
    out = draw_prediction(_prediction(), color=RED, thickness=2, fill_rectangles=False)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    # box 10,20,50,40 (exclusive) -> pixel columns 10..49, rows 20..39
    for y, x in [(20, 10), (21, 30), (39, 49), (38, 48), (30, 10), (30, 49), (20, 49)]:
        assert tuple(out[y, x]) == RED, (y, x)
    assert (out[22:38, 12:48] == 0).all()
    assert (out[:20] == 0).all() and (out[40:] == 0).all()
    assert (out[:, :10] == 0).all() and (out[:, 50:] == 0).all()


def test_fill_tints_inside_at_half_opacity():
    out = draw_prediction(_prediction(), color=RED, thickness=1, opacity=0.5)
    inside = out[30, 30]
    assert abs(int(inside[0]) - round(255 * 0.25)) <= 1
    assert inside[1] == 0 and inside[2] == 0
    assert (out[:20] == 0).all()


def test_mask_is_blended_at_opacity():
    mask = np.zeros((1, H, W), bool)
    mask[0, 5:15, 60:75] = True
    pred = _prediction(boxes=[(60, 5, 75, 15)], masks=mask)
    color = (200, 100, 40)
    out = draw_prediction(pred, color=color, opacity=0.6, fill_rectangles=False, thickness=1)
    expected = np.round(np.asarray(color) * 0.6)
    assert np.abs(out[10, 65].astype(int) - expected).max() <= 1
    assert (out[30:, :] == 0).all()


def test_default_colors_follow_class_palette():
    pred = _prediction(boxes=[(0, 0, 20, 20), (40, 30, 70, 50)], class_idxs=[0, 1])
    out = draw_prediction(pred, fill_rectangles=False, thickness=1)
    assert tuple(out[0, 0]) == class_color(0)
    assert tuple(out[30, 40]) == class_color(1)
    assert class_color(0) != class_color(1)


def test_default_thickness_scales_with_image():
    image = np.zeros((600, 900, 3), np.uint8)
    pred = _prediction(boxes=[(100, 100, 400, 400)], image=image)
    pred.height, pred.width = 600, 900
    out = draw_prediction(pred, color=RED, fill_rectangles=False)
    assert tuple(out[101, 200]) == RED  # thickness 2
    assert tuple(out[102, 200]) == (0, 0, 0)


def test_keypoints_are_drawn_as_dots():
    keypoints = np.array([[[30, 30, 0.9], [5, 5, 0.0]]], np.float32)
    pred = _prediction(keypoints=keypoints)
    out = draw_prediction(pred, color=RED, fill_rectangles=False, thickness=1)
    assert tuple(out[30, 30]) == RED
    assert tuple(out[5, 5]) == (0, 0, 0)  # score 0: not drawn


def test_draw_tags_changes_pixels_at_box_corner():
    pred = _prediction()
    plain = draw_prediction(pred, color=RED, fill_rectangles=False)
    tagged = draw_prediction(pred, color=RED, fill_rectangles=False, draw_tags=True)
    assert (plain[:20, 10:50] == 0).all()
    assert (tagged[:20, 10:50] != 0).any()  # label box above the top-left corner
    assert (tagged[:20, :10] == 0).all()


def test_tag_inside_box_when_at_top_edge():
    pred = _prediction(boxes=[(10, 0, 70, 40)])
    tagged = draw_prediction(pred, color=RED, fill_rectangles=False, draw_tags=True)
    plain = draw_prediction(pred, color=RED, fill_rectangles=False)
    assert (tagged[2:12, 12:40] != plain[2:12, 12:40]).any()


def test_input_image_not_modified():
    image = np.full((H, W, 3), 7, np.uint8)
    pred = _prediction(image=image, keypoints=np.array([[[30, 30, 1.0]]], np.float32))
    out = draw_prediction(pred, color=RED, draw_tags=True)
    assert (image == 7).all()
    assert (pred.load_image() == 7).all()
    assert not np.shares_memory(out, image)


def test_save_path_and_save_dir(tmp_path):
    pred = _prediction(name="street.jpg")
    out = draw_prediction(pred, save_path=tmp_path / "a" / "b" / "drawn.png", save_dir=tmp_path)
    with Image.open(tmp_path / "a" / "b" / "drawn.png") as saved:
        assert (np.asarray(saved) == out).all()
    with Image.open(tmp_path / "street.jpg") as jpg:
        assert jpg.format == "JPEG" and jpg.size == (W, H)


def test_save_dir_video_frame_and_extensionless_names(tmp_path):
    draw_prediction(_prediction(name="clip.mp4", frame_index=12), save_dir=tmp_path / "v")
    assert (tmp_path / "v" / "clip_000012.png").is_file()
    draw_prediction(_prediction(name="array_3"), save_dir=tmp_path)
    with Image.open(tmp_path / "array_3.png") as png:
        assert png.format == "PNG" and png.size == (W, H)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"opacity": 1.5}, "opacity"),
        ({"opacity": -0.1}, "opacity"),
        ({"thickness": 0}, "thickness"),
        ({"color": (255, 0)}, "color"),
        ({"color": (255, 0, 256)}, "color"),
        ({"color": (1.5, 0, 0)}, "color"),
    ],
)
def test_bad_arguments_raise(kwargs, word):
    with pytest.raises(ValueError, match=word):
        draw_prediction(_prediction(), **kwargs)


def test_errored_prediction_raises():
    pred = _prediction(name="broken.jpg", error="cannot decode image")
    with pytest.raises(ValueError, match="broken.jpg.*cannot decode image"):
        draw_prediction(pred)


def test_prediction_visualize_delegates(tmp_path):
    out = _prediction().visualize(color=RED, fill_rectangles=False, save_dir=tmp_path)
    assert tuple(out[20, 10]) == RED
    assert (tmp_path / "x.png").is_file()


def test_empty_prediction_returns_copy():
    image = np.full((H, W, 3), 9, np.uint8)
    out = draw_prediction(_prediction(boxes=np.zeros((0, 4)), image=image))
    assert (out == image).all()
