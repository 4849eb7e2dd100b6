"""Settings: one definition per field gives its default, its help and its group."""

import pickle

from engine.settings import SETTINGS, ModelInfo, PredictSettings, validate_settings

INFO = ModelInfo("m", "detection", ["cat", "dog"], default_conf=0.4, input_size=(320, 480))


def test_help_shows_the_default_predict_uses_when_the_option_is_not_given():
    defaults = validate_settings({}, INFO)
    shown = {}
    for spec in SETTINGS:
        assert spec.help.count("(default") <= 1, spec.help
        if "(default " in spec.help and "(default: " not in spec.help:
            text = spec.help.rsplit("(default ", 1)[1].rstrip(")")
            shown[spec.name] = spec.cli_type(text)
            assert shown[spec.name] == getattr(getattr(defaults, spec.group), spec.attribute)
    assert shown == {
        "batch_size": 8,
        "max_pixels": 178_956_970,
        "url_timeout": 30.0,
        "overlap": 0.2,
        "merge": "greedy_nmm",
        "merge_metric": "ios",
        "merge_threshold": 0.5,
        "stride": 1,
        "start_frame": 0,
    }


def test_flat_keywords_land_in_their_groups_and_describe_stays_flat():
    options = {"conf": 0.3, "classes": ["dog"], "window_size": 64, "stride": 2, "duration": 3}
    settings = validate_settings(options, INFO)
    assert (settings.general.conf, settings.general.class_idxs) == (0.3, (1,))
    assert settings.tiling.window_size == (64, 64)
    assert (settings.video.stride, settings.video.duration) == (2, 3.0)
    described = settings.describe(INFO.classes)
    assert list(described) == [spec.name for spec in SETTINGS if spec.name != "classes"] + [
        "classes"
    ]
    assert described["classes"] == ["dog"] and described["window_size"] == (64, 64)


def test_settings_travel_pickled_and_group_equal_requests():
    settings = validate_settings({"sliding_window": True, "merge": "nmm"}, INFO)
    back = pickle.loads(pickle.dumps(settings))
    assert isinstance(back, PredictSettings) and back == settings
    assert hash(back) == hash(validate_settings({"sliding_window": True, "merge": "nmm"}, INFO))
