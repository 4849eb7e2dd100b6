"""The CLI refuses what its arguments alone tell is wrong before it starts Ray or a model
(issue 17: `--merge wbf`, no inputs, a bad `--tracker`... failed only after 10-20 s of
start-up, or after detection had run over the whole video)."""

from __future__ import annotations

import pytest

import engine
from engine.cli import main


@pytest.fixture
def nothing_may_start(monkeypatch):
    def deploy(*args, **kwargs):
        raise AssertionError("the CLI started a model before checking its arguments")

    monkeypatch.setattr(engine, "deploy", deploy)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["predict", "a.png", "--conf", "2"], "conf must be between"),
        (["predict", "a.png", "--merge", "wbf"], "merge must be one of nms"),
        (["predict", "a.png", "--img-size", "0"], "img_size must be between"),
        (["predict", "a.png", "--stride", "0"], "stride must be an integer >= 1"),
        (["predict"], "nothing to predict: give INPUTS"),
        (["track", "clip.mp4", "--tracker", "nosuch"], "unknown tracker 'nosuch'"),
        (["track", "clip.mp4", "--num-frames", "0"], "num_frames"),
        (["predict", "a.png", "--half"], "--half runs the model in float16 on a GPU"),
        (["track", "clip.mp4", "--half"], "add --device cuda"),
    ],
)
def test_bad_arguments_exit_2_before_anything_starts(
    nothing_may_start, tmp_path, capsys, arguments, message
):
    command, *rest = arguments
    code = main([command, *rest, "--model", "reference/color-boxes", "--out", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "predictions.jsonl").exists()


def test_half_without_a_gpu_device_is_refused_before_ray_starts(monkeypatch):
    from engine import api

    def no_ray(*args, **kwargs):
        raise AssertionError("deploy started Ray before checking half")

    monkeypatch.setattr(api, "ensure_ray", no_ray)
    with pytest.raises(ValueError, match=r"half=True runs the model in float16 on a GPU"):
        engine.deploy("reference/color-boxes", half=True)
    with pytest.raises(ValueError, match="half must be True or False"):
        engine.deploy("reference/color-boxes", device="cuda", half="yes")


@pytest.mark.parametrize("idle", ["0", "-5", "nan", "inf"])
def test_tessera_ray_start_refuses_an_idle_time_that_is_not_above_0(
    tmp_path, monkeypatch, capsys, idle
):
    # a local Ray that stops at once (0, a negative time) or never (inf, nan) is refused,
    # before any cluster is started or joined
    monkeypatch.setenv("TESSERA_LOCAL_RAY_DIR", str(tmp_path))
    assert main(["ray", "start", "--idle-s", idle]) == 2
    assert "--idle-s must be a number of seconds above 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing started: no lock, no log, no record
