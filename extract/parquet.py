"""Parquet output: one `features.parquet`, a row per image, a fixed-size-list column per layer.

Written at assembly time from the same staging matrices as the .npy output, in row groups of bounded
size, so both formats hold the same numbers and resuming works the same way. Layer shapes, levels and
the model ride along in the file's metadata (key `cnn_features`); `read_features` turns it back into arrays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from extract.extras import require
from extract.plan import Plan

METADATA_KEY = b"cnn_features"


def write_parquet(path: Path, plan: Plan, matrices: list[np.ndarray], rows: np.ndarray, block_bytes: int) -> None:
    pa = require("pyarrow", "--format parquet")
    pq = require("pyarrow.parquet", "--format parquet")

    value_type = pa.float16() if plan.dtype == "float16" else pa.float32()
    fields = [pa.field("row", pa.int64()), pa.field("path", pa.string())]
    fields += [pa.field(layer.file, pa.list_(value_type, int(np.prod(layer.shape)))) for layer in plan.layers]
    description = {
        "model": plan.model.name,
        "model_sha256": plan.model.sha256,
        "model_precision": plan.model.precision,
        "pooling": plan.pooling,
        "dtype": plan.dtype,
        "layers": [
            {"name": layer.name, "column": layer.file, "level": layer.level, "shape": list(layer.shape)}
            for layer in plan.layers
        ],
    }
    schema = pa.schema(fields, metadata={METADATA_KEY: json.dumps(description).encode()})
    row_bytes = sum(matrix[0].nbytes for matrix in matrices) if len(rows) else 1
    step = max(1, block_bytes // row_bytes)
    temporary = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(temporary, schema) as writer:
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            columns = [
                pa.array(np.arange(start, start + len(chunk), dtype=np.int64)),
                pa.array([plan.sources[r] for r in chunk], type=pa.string()),
            ]
            for matrix in matrices:
                values = np.ascontiguousarray(matrix[chunk]).reshape(-1)
                columns.append(pa.FixedSizeListArray.from_arrays(pa.array(values), int(np.prod(matrix.shape[1:]))))
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_features(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(paths in row order, {layer name: array [rows, *shape]}) from a features.parquet."""
    pq = require("pyarrow.parquet", "reading features.parquet")

    table = pq.read_table(path)
    description = json.loads(table.schema.metadata[METADATA_KEY])
    arrays = {}
    for layer in description["layers"]:
        column = table.column(layer["column"]).combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False)
        arrays[layer["name"]] = values.reshape(len(table), *layer["shape"])
    return table.column("path").to_pylist(), arrays
