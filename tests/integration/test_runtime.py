"""The runtime's sub-graphs: the smallest graph holding the requested outputs, same numbers as the full one."""

from __future__ import annotations

import numpy as np

from engine.images import preprocess_image
from engine.runtime import OrtRuntime
from engine.subgraphs import prefix_models
from tests.helpers import photo


def test_prefix_graphs_are_chosen_by_depth_and_bit_identical(lite0_dir, lite0_manifest):
    path = lite0_dir / "model.onnx"
    runtime = OrtRuntime(
        path, ["CPUExecutionProvider"], 2, True, prefix_models(path, lite0_manifest, "layers", pooled=False)
    )
    layers = lite0_manifest.layers
    assert len(runtime.graphs) == len(layers)  # one prefix per layer but the last, plus the full model
    batch = np.stack([preprocess_image(photo(name), lite0_manifest.preprocess) for name in ("chelsea", "coffee")])
    for depth, layer in enumerate(layers):
        names = list(layer.outputs.values())
        assert runtime.session_for(names) is runtime.graphs[depth][1]
        full = runtime.session.run(names, {"input": batch})
        for got, expected in zip(runtime.run(names, batch), full, strict=True):
            np.testing.assert_array_equal(got, expected)
    # a request mixing depths runs the graph of its deepest layer
    assert runtime.session_for(["stem__avg", "stride16__max"]) is runtime.graphs[3][1]


def test_level_cuts_end_where_each_level_ends(lite0_dir, lite0_manifest):
    """The default: a sub-graph per level boundary, so a level request computes only up to that level."""
    path = lite0_dir / "model.onnx"
    runtime = OrtRuntime(path, ["CPUExecutionProvider"], 2, True, prefix_models(path, lite0_manifest, pooled=False))
    levels = [layer.level for layer in lite0_manifest.layers]
    assert len(runtime.graphs) == len(set(levels))  # low ends, mid ends, the full model
    batch = np.stack([preprocess_image(photo("chelsea"), lite0_manifest.preprocess)])
    for depth, level in enumerate(("low", "mid")):
        deepest = max(i for i, name in enumerate(levels) if name == level)
        names = [o for layer in lite0_manifest.layers if layer.level == level for o in layer.outputs.values()]
        session = runtime.session_for(names)
        assert session is runtime.graphs[depth][1]
        assert set(runtime.graphs[depth][0]) == {
            o for layer in lite0_manifest.layers[: deepest + 1] for o in layer.outputs.values()
        }
        for got, expected in zip(runtime.run(names, batch), runtime.session.run(names, {"input": batch}), strict=True):
            np.testing.assert_array_equal(got, expected)


def test_pooled_graph_serves_average_pooled_requests(lite0_dir, lite0_manifest):
    """The default request (average-pooled embeddings of every level) runs a graph without the full maps and max
    pooling; level requests keep their cuts, anything else the whole model."""
    path = lite0_dir / "model.onnx"
    runtime = OrtRuntime(path, ["CPUExecutionProvider"], 2, True, prefix_models(path, lite0_manifest))
    layers = lite0_manifest.layers
    assert len(runtime.graphs) == 4  # low ends, mid ends, the pooled graph, the whole model
    batch = np.stack([preprocess_image(photo(name), lite0_manifest.preprocess) for name in ("chelsea", "rocket")])
    pooled = [layer.outputs.get("avg", layer.outputs["none"]) for layer in layers]
    low = [layer.outputs["avg"] for layer in layers if layer.level == "low"]
    for names, graph in ((pooled, 2), (low, 0), ([*low, "stem__max"], 0), ([*pooled, "stem"], 3)):
        assert runtime.session_for(names) is runtime.graphs[graph][1]
        for got, expected in zip(runtime.run(names, batch), runtime.session.run(names, {"input": batch}), strict=True):
            np.testing.assert_array_equal(got, expected)
    assert set(runtime.graphs[2][0]) == set(pooled)  # no map, no max: ONNX Runtime would compute them all
    assert runtime.graphs[3][1] is runtime.session
