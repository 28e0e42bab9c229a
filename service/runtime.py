"""ONNX Runtime session for one exported model: explicit providers and threads, provider read back.

Created inside each gunicorn worker after the fork (ONNX Runtime thread pools do not survive fork()).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


class OrtRuntime:
    """run(output names, NCHW batch) -> arrays; `provider` is what the session actually got."""

    def __init__(self, path: Path, providers: list[str], intra_op_threads: int, dynamic_batch: bool = True):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        available = set(ort.get_available_providers())
        wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self.warnings: list[str] = []
        missing = [p for p in providers if p not in available]
        if missing:
            self.warnings.append(f"{', '.join(missing)} not available in this onnxruntime build; using {wanted[0]}")
        self.session = ort.InferenceSession(str(path), options, providers=wanted)
        self.providers = self.session.get_providers()
        if providers[0] not in self.providers and not missing:
            self.warnings.append(f"{providers[0]} failed to load; running on {self.providers[0]}")
        for warning in self.warnings:
            log.warning("%s: %s", path.parent.name, warning)
        self.input_name = self.session.get_inputs()[0].name
        self.dynamic_batch = dynamic_batch

    @property
    def provider(self) -> str:
        return self.providers[0]

    def run(self, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        if self.dynamic_batch or len(batch) == 1:
            return self.session.run(outputs, {self.input_name: batch})
        runs = [self.session.run(outputs, {self.input_name: batch[i : i + 1]}) for i in range(len(batch))]
        return [np.concatenate([run[k] for run in runs]) for k in range(len(outputs))]
