"""Unit tests of the request core (engine.features) and settings (engine.settings)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from engine.answers import encode_array, l2_normalise
from engine.errors import InvalidInput
from engine.features import FeatureOptions, parse_options
from engine.settings import Settings, SettingsError


def test_options_from_strings_lists_and_bools():
    options = parse_options({"levels": "low, high", "pooling": "MAX", "normalize": "1", "dtype": "float16"})
    assert options == FeatureOptions(levels=("low", "high"), poolings=("max",), normalize=True, dtype="float16")
    assert parse_options({"layers": ["stem", "stem", "head"], "normalize": False}).layers == ("stem", "head")
    assert parse_options({}) == FeatureOptions()


def test_null_means_the_default_so_echoed_options_go_back_as_they_are():
    nulls = dict.fromkeys(("levels", "layers", "pooling", "normalize", "encoding", "dtype"))
    assert parse_options(nulls) == FeatureOptions()
    assert parse_options({"levels": ["low"], "layers": None, "dtype": None}) == FeatureOptions(levels=("low",))


@pytest.mark.parametrize(
    "raw",
    [{"levels": "top"}, {"layers": ""}, {"layers": 3}, {"pooling": "sum"}, {"normalize": "perhaps"}, {"colour": "red"}],
)
def test_bad_options(raw):
    with pytest.raises(InvalidInput):
        parse_options(raw)


def test_l2_normalise_vectors_and_maps():
    vector = l2_normalise(np.array([3.0, 4.0], dtype=np.float32))
    np.testing.assert_allclose(vector, [0.6, 0.8])
    maps = l2_normalise(np.random.default_rng(0).standard_normal((8, 5, 5)).astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(maps, axis=0), np.ones((5, 5)), rtol=1e-5)
    assert np.all(l2_normalise(np.zeros(4, dtype=np.float32)) == 0)  # no division by zero


def test_base64_encoding_round_trip():
    array = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    encoded = encode_array(array, FeatureOptions(encoding="base64", dtype="float16"))
    decoded = np.frombuffer(base64.b64decode(encoded["data"]), dtype="<f2").reshape(encoded["shape"])
    np.testing.assert_allclose(decoded, array, rtol=1e-3)
    assert encode_array(array, FeatureOptions())["values"].dtype == np.float32


def test_settings_from_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    settings = Settings.from_env(
        {"FEATURES_WORKERS": "2", "FEATURES_PROVIDERS": "CUDA", "FEATURES_API_KEY_FILE": str(key_file)}
    )
    assert settings.workers == 2 and settings.provider_list == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.api_key == "from-file" and settings.intra_op_threads >= 1
    assert Settings.from_env({"FEATURES_ORT_THREADS": "3"}).intra_op_threads == 3
    batching = Settings.from_env(
        {"FEATURES_BATCH_IMAGES": "4", "FEATURES_BATCH_WAIT_MS": "3", "FEATURES_ORT_SPIN": "on"}
    )
    assert (batching.batch_images, batching.batch_wait_ms, batching.ort_spin) == (4, 3, True)
    assert not Settings.from_env({}).ort_spin
    assert Settings.from_env({}).prefix_graphs == "levels"
    assert Settings.from_env({"FEATURES_PREFIX_GRAPHS": "Layers"}).prefix_graphs == "layers"
    assert Settings.from_env({}).pooled_graphs == "int8"
    assert Settings.from_env({"FEATURES_POOLED_GRAPHS": "all"}).pooled_graphs == "all"
    bad_values = ({"FEATURES_PORT": "http"}, {"FEATURES_PROVIDERS": "tpu"}, {"FEATURES_WORKERS": "0"},
                  {"FEATURES_BATCH_IMAGES": "0"}, {"FEATURES_BATCH_WAIT_MS": "-1"},
                  {"FEATURES_ORT_SPIN": "maybe"}, {"FEATURES_PREFIX_GRAPHS": "stages"},
                  {"FEATURES_POOLED_GRAPHS": "on"})  # fmt: skip
    for bad in bad_values:
        with pytest.raises(SettingsError):
            Settings.from_env(bad)
