"""The core, free of HTTP: manifests, settings, image decoding and preprocessing, ONNX Runtime sessions and prefix
sub-graphs, the micro-batcher, feature extraction, pictures, and the one error family (engine/errors.py).

The edges build on it: service/ (HTTP), extract/ (batch), insight/ (the study); the exporter uses its manifest and
preprocessing. It imports none of them, and no flask or torch (tests/unit/test_import_rules.py).
"""
