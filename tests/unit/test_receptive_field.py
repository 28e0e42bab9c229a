"""Unit tests of graph-derived stride and receptive field (exporter.receptive_field), on hand-built graphs."""

from __future__ import annotations

from onnx import TensorProto, helper

from exporter.receptive_field import analyse


def conv_graph():
    def weight(name, cout, cin, k):
        return helper.make_tensor(name, TensorProto.FLOAT, [cout, cin, k, k], [0.0] * (cout * cin * k * k))

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),  # k3 s2
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], dilations=[2, 2], pads=[2, 2, 2, 2]),  # k3 d2 s1
        helper.make_node("MaxPool", ["c2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Add", ["p", "p"], ["sum"]),
        helper.make_node("GlobalAveragePool", ["sum"], ["g"]),
        helper.make_node("Mul", ["sum", "g"], ["scaled"]),  # squeeze-excite style global context
        helper.make_node("Flatten", ["g"], ["flat"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 4])],
        [weight("w1", 4, 3, 3), weight("w2", 4, 4, 3)],
    )  # fmt: skip
    return helper.make_model(graph)


def test_conv_dilation_pool_and_global():
    geo = analyse(conv_graph(), "x")
    assert (geo["c1"].stride, geo["c1"].receptive_field) == (2, 3)
    assert (geo["r1"].stride, geo["r1"].receptive_field) == (2, 3)
    assert (geo["c2"].stride, geo["c2"].receptive_field) == (2, 3 + 2 * 2 * 2)  # dilation 2 at jump 2
    assert (geo["p"].stride, geo["p"].receptive_field) == (4, 11 + 1 * 2)
    assert geo["sum"].receptive_field == 13 and not geo["sum"].global_context
    assert not geo["g"].spatial and not geo["flat"].spatial
    assert geo["scaled"].spatial and geo["scaled"].global_context and geo["scaled"].stride == 4


def test_matmul_with_a_weight_is_per_position_but_attention_is_global():
    """ConvNeXt's channels-last Linear keeps the grid; a product of two activations (attention) does not."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["patches"], strides=[4, 4]),  # k4 s4 patch embedding
        helper.make_node("Transpose", ["patches"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["nhwc", "fc"], ["linear"]),  # 1x1 "Linear" on the channels axis
        helper.make_node("MatMul", ["linear", "linear"], ["attended"]),  # both sides from the image
        helper.make_node("Add", ["linear", "attended"], ["residual"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("residual", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 4, 4], [0.0] * 192),
         helper.make_tensor("fc", TensorProto.FLOAT, [4, 4], [0.0] * 16)],
    )  # fmt: skip
    geo = analyse(helper.make_model(graph), "x")
    assert (geo["linear"].stride, geo["linear"].receptive_field, geo["linear"].global_context) == (4, 4, False)
    assert not geo["attended"].spatial
    assert geo["residual"].spatial and geo["residual"].global_context
