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
