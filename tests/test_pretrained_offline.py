"""Pretrained weights that can be neither read from torch's cache nor downloaded fail at
once, before Ray starts, in one line (issue 17: 18 s, then a long worker traceback)."""

from __future__ import annotations

import socket

import pytest

import engine
import engine.api
from engine.cli import main
from engine.models.torchvision_models import TorchvisionAdapter

MODEL = "torchvision/fasterrcnn_mobilenet_v3_large_fpn"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch cache, weights served from a port where nothing listens, no Ray."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(
        TorchvisionAdapter, "pretrained_url", lambda self: f"http://127.0.0.1:{port}/w.pth"
    )

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the weights were checked")

    monkeypatch.setattr(engine.api, "ensure_ray", no_ray)
    return tmp_path / "torch" / "hub" / "checkpoints" / "w.pth"


def test_deploy_fails_at_once_saying_what_to_pass(offline):
    with pytest.raises(RuntimeError) as caught:
        engine.deploy(MODEL)
    message = str(caught.value)
    assert "\n" not in message
    assert "not in torch's cache" in message and "127.0.0.1 cannot be reached" in message
    assert "pretrained=False" in message and "weights=PATH" in message


def test_the_cli_exits_2_with_the_line(offline, tmp_path, capsys):
    args = ["predict", "a.png", "--model", MODEL, "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "--no-pretrained, --weights FILE" in capsys.readouterr().err


def test_cached_weights_or_no_pretrained_pass_the_check(offline):
    from engine.models.zoo import resolve_model

    resolve_model(MODEL, pretrained=False).check_ready()
    offline.parent.mkdir(parents=True)
    offline.write_bytes(b"weights")  # what torch.hub would find, and read without a download
    resolve_model(MODEL).check_ready()
