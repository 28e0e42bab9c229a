"""Load generation with wrk (C, epoll: costs the server's cores far less than a Python client would).

Bodies are prepared up front (raw JPEG, multipart, base64 JSON, or an Open Inference Protocol (KServe V2) infer
body with the image as binary BYTES) and sent round-robin over keep-alive connections; wrk is closed-loop, so
concurrency = connections.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk.lua")
V2_HEADER_LENGTH = "Inference-Header-Content-Length"


class LoadError(RuntimeError):
    """wrk is missing or failed."""


@dataclass(frozen=True)
class Bodies:
    folder: Path
    count: int
    content_type: str


def prepare_bodies(images: list[bytes], kind: str, folder: Path, fields: dict | None = None) -> Bodies:
    """One request body per image, in `kind` = raw | multipart | json | v2, written as folder/<i>.body.

    `fields`: form fields (multipart), or top-level members added to the JSON body (json) or to the V2
    inference header (v2: e.g. "outputs" or "parameters"). A v2 body also gets folder/<i>.headers, its
    Inference-Header-Content-Length, which bench/wrk.lua sends with that body."""
    fields = fields or {}
    folder.mkdir(parents=True, exist_ok=True)
    boundary = uuid.uuid4().hex
    for index, image in enumerate(images):
        if kind == "raw":
            body, content_type = image, "image/jpeg"
        elif kind == "multipart":
            parts = [
                f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                for k, v in fields.items()
            ]
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{index}.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n".encode()
                + image
                + b"\r\n"
            )
            body, content_type = (
                b"".join(parts) + f"--{boundary}--\r\n".encode(),
                f"multipart/form-data; boundary={boundary}",
            )
        elif kind == "json":
            payload = {"inputs": [{"image": base64.b64encode(image).decode()}], **fields}
            body, content_type = json.dumps(payload).encode(), "application/json"
        elif kind == "v2":
            body, json_length = v2_infer_body(image, fields)
            content_type = "application/octet-stream"
            (folder / f"{index}.headers").write_text(f"{V2_HEADER_LENGTH}: {json_length}\n")
        else:
            raise ValueError(f"unknown body kind {kind!r}")
        (folder / f"{index}.body").write_bytes(body)
    return Bodies(folder, len(images), content_type)


def v2_infer_body(image: bytes, fields: dict) -> tuple[bytes, int]:
    """A V2 infer body for one image as the `image` BYTES input, framed as tritonclient.http frames it
    (InferenceServerClient.generate_request_body): the JSON header, then the element's 4-byte little-endian
    length and its bytes. Returns the body and the header's length (Inference-Header-Content-Length)."""
    element = struct.pack("<I", len(image)) + image
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(element)}}
    header = json.dumps({"inputs": [tensor], **fields}, separators=(",", ":")).encode()
    return header + element, len(header)


def wrk(url: str, path: str, bodies: Bodies, concurrency: int, seconds: float, accept: str = "") -> dict:
    """Run wrk for `seconds` at `concurrency` connections (with an Accept header if given); returns its summary
    with images/s and the mean bytes of an answer (headers included) filled in."""
    binary = shutil.which("wrk")
    if binary is None:
        raise LoadError("wrk is not installed (Debian: apt-get install wrk)")
    threads = min(concurrency, 2)
    command = [
        binary,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "60s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        path,
        bodies.content_type,
        str(bodies.folder),
        str(bodies.count),
        accept,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCH-JSON ")), None)
    if result.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout[-500:]}")
    summary = json.loads(line.removeprefix("BENCH-JSON "))
    time.sleep(1)  # the server finishes requests wrk abandoned at its deadline before the next run starts
    seconds_run = summary["duration_us"] / 1e6
    errors = sum(summary["errors"].values())
    summary["ok"] = summary["requests"] - summary["errors"]["status"]
    summary["images_per_s"] = summary["ok"] / seconds_run
    summary["failed"] = errors
    summary["response_bytes"] = round(summary["bytes"] / summary["requests"]) if summary["requests"] else None
    return summary
