"""How invariant is each layer? An offline study over real photos (`python -m insight --help`).

Runs the exported ONNX model through the core, engine/ (manifest, preprocessing, ONNX Runtime; no torch), and
writes insight.json plus matplotlib plots. matplotlib is only needed here (the `insight` extra), never by the
server.
"""
