"""A tiny CNN for the unit tier, built with onnx.helper and described by a model.json as an export describes one.

NCHW float input [N, 3, 64, 64]; four Conv + Relu stages at strides 2, 4, 8, 16, each exposed raw and through
GlobalAveragePool / GlobalMaxPool (+ Flatten) as `<layer>__avg` / `<layer>__max`, as the exporter adds them;
then a 16-value embedding and 10 logits with labels. Weights are seeded, so every build is the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.manifest import Layer, Manifest, OnnxInfo, Preprocess, Source, Verification, sha256_of

NAME = "tiny"
INPUT = "input"
INPUT_SHAPE = [3, 64, 64]
OPSET, IR_VERSION = 17, 8  # what every onnxruntime >= 1.20 runs
LABELS = [f"class {i}" for i in range(10)]
# (name, level, out channels, stride, receptive field): 3x3 convolutions, padding 1, each at stride 2
STAGES = [("stem", "low", 4, 2, 3), ("stride4", "low", 8, 4, 7), ("stride8", "mid", 8, 8, 15),
          ("stride16", "high", 16, 16, 31)]  # fmt: skip
EMBEDDING, LOGITS = 16, len(LABELS)
PREPROCESS = Preprocess(size=[64, 64], resize=72, interpolation="bilinear", mean=[127.0] * 3, std=[128.0] * 3)


def graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, weights, outputs = [], [], []

    def weight(name: str, *shape: int, scale: float) -> str:
        weights.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def output(name: str, *shape: int) -> None:
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shape]))

    previous, channels, size = INPUT, INPUT_SHAPE[0], INPUT_SHAPE[1]
    for name, _, out, _, _ in STAGES:
        kernel = weight(f"{name}.w", out, channels, 3, 3, scale=(2 / (9 * channels)) ** 0.5)
        bias = weight(f"{name}.b", out, scale=0.1)
        nodes += [helper.make_node("Conv", [previous, kernel, bias], [f"{name}.conv"], strides=[2, 2],
                                   pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
                  helper.make_node("Relu", [f"{name}.conv"], [name])]  # fmt: skip
        size //= 2
        output(name, out, size, size)
        for pooling, op in (("avg", "GlobalAveragePool"), ("max", "GlobalMaxPool")):
            nodes += [helper.make_node(op, [name], [f"{name}__{pooling}.4d"]),
                      helper.make_node("Flatten", [f"{name}__{pooling}.4d"], [f"{name}__{pooling}"])]  # fmt: skip
            output(f"{name}__{pooling}", out)
        previous, channels = name, out
    nodes += [
        helper.make_node("Gemm", [f"{previous}__avg", weight("embedding.w", EMBEDDING, channels, scale=0.5),
                                  weight("embedding.b", EMBEDDING, scale=0.1)], ["embedding.linear"], transB=1),
        helper.make_node("Relu", ["embedding.linear"], ["embedding"]),
        helper.make_node("Gemm", ["embedding", weight("logits.w", LOGITS, EMBEDDING, scale=0.5),
                                  weight("logits.b", LOGITS, scale=0.1)], ["logits"], transB=1),
    ]  # fmt: skip
    output("embedding", EMBEDDING)
    output("logits", LOGITS)
    image = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *INPUT_SHAPE])
    model = helper.make_model(helper.make_graph(nodes, NAME, [image], outputs, weights),
                              opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)  # fmt: skip
    onnx.checker.check_model(model, full_check=True)
    return model


def layers() -> list[Layer]:
    """The manifest's layers in depth order: maps with none/avg/max outputs, then the two vectors."""
    maps, size = [], INPUT_SHAPE[1]
    for name, level, channels, stride, field in STAGES:
        size //= 2
        outputs = {"none": name, "avg": f"{name}__avg", "max": f"{name}__max"}
        maps.append(Layer(name, level, [channels, size, size], stride, field, outputs, source=f"{name}.conv"))
    vectors = [Layer(name, "high", [width], None, None, {"none": name}, source=name)
               for name, width in (("embedding", EMBEDDING), ("logits", LOGITS))]  # fmt: skip
    return maps + vectors


def write(models_dir: Path, name: str = NAME) -> Path:
    """models_dir/name/{model.onnx, model.json}, as `python -m exporter` lays an export out; returns the folder."""
    folder = Path(models_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(graph(), folder / "model.onnx")
    manifest = Manifest(
        name=name,
        onnx=OnnxInfo(
            file="model.onnx",
            sha256=sha256_of(folder / "model.onnx"),
            opset=OPSET,
            input=INPUT,
            input_shape=INPUT_SHAPE,
            dynamic_batch=True,
        ),
        source=Source(kind="onnx", origin="tests/unit/tiny_model.py", license="Apache-2.0"),
        preprocess=PREPROCESS,
        layers=layers(),
        verification=Verification(
            passed=True,
            reference="onnx.helper graph (no reference model)",
            images=[],
            tolerance="exact",
            max_abs_error=0.0,
            per_output={},
        ),
        labels=LABELS,
        logits_layer="logits",
        tools={"onnx": onnx.__version__},
    )
    (folder / "model.json").write_text(manifest.to_json())
    return folder
