"""Offline side of the project: PyTorch or ONNX models -> ONNX with intermediate outputs + model.json.

Never imported by the service; it needs torch and onnx (the `export` extra).
"""

OPSET = 21  # ONNX opset written by the exporter; ONNX Runtime >= 1.18 runs it
