"""A generated image collection for the batch-extraction tests: real photos, varied, plus broken files.

Crops, rescales, rotations, flips, grey and transparent versions of scikit-image's four photos, saved as
JPEG, PNG and WebP in nested folders, and files that must fail with a reason instead of stopping a run.

`cli` runs `python -m extract` or `python -m insight` as a user would, with FEATURES_* variables of its own.

Also `python -m tests.integration.extract_helpers BATCHES ARGS…`: the extraction CLI, held still after its first BATCHES
journaled batches until a signal ends it, so that a test can interrupt or kill a run in the middle without
racing it (see pausing_cli).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
FORMATS = (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"))


def _variant(image: Image.Image, rng: random.Random) -> Image.Image:
    width, height = image.size
    side = rng.uniform(0.45, 1.0)
    crop_w, crop_h = max(32, int(width * side)), max(32, int(height * rng.uniform(0.45, 1.0)))
    left, top = rng.randrange(0, width - crop_w + 1), rng.randrange(0, height - crop_h + 1)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    scale = rng.uniform(0.25, 1.0)
    image = image.resize((max(24, int(crop_w * scale)), max(24, int(crop_h * scale))), Image.Resampling.BILINEAR)
    turn = rng.choice([None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.FLIP_LEFT_RIGHT])
    if turn is not None:
        image = image.transpose(turn)
    if rng.random() < 0.3:
        image = image.rotate(rng.uniform(-30, 30), expand=True, fillcolor=(128, 128, 128))
    if rng.random() < 0.1:
        image = ImageOps.grayscale(image)
    return image


def make_collection(root: Path, count: int, seed: int = 0) -> dict[str, list[Path]]:
    """`count` good images under root/photos (nested folders) and the broken files; returns both lists."""
    from exporter.verify import photo

    rng = random.Random(seed)
    originals = [photo(name) for name in PHOTOS]
    good = []
    for index in range(count):
        source = index % len(PHOTOS)
        image = _variant(originals[source], rng)
        suffix, kind = FORMATS[index % 5 % 3]  # mostly JPEG, some PNG and WebP
        folder = root / "photos" / PHOTOS[source] / f"set{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{index:04d}.{suffix.upper() if index % 17 == 0 else suffix}"
        if kind == "PNG" and index % 4 == 0:  # transparent corner, flattened onto white by the service
            image = image.convert("RGBA")
            alpha = np.full((image.height, image.width), 255, dtype=np.uint8)
            alpha[: image.height // 3, : image.width // 3] = 0
            image.putalpha(Image.fromarray(alpha))
        image.save(path, kind, quality=85) if kind != "PNG" else image.save(path, kind)
        good.append(path)
    broken = root / "photos" / "broken"
    broken.mkdir(parents=True)
    whole = good[0].read_bytes()
    (broken / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (broken / "random.jpg").write_bytes(np.random.default_rng(seed).bytes(5000))
    (broken / "empty.png").write_bytes(b"")
    text = root / "notes.txt"
    text.write_text("not an image at all\n")
    missing = root / "gone.jpg"
    bad = [broken / "truncated.jpg", broken / "random.jpg", broken / "empty.png"]
    return {"good": good, "bad_in_folder": bad, "text": [text], "missing": [missing]}


def cli(module: str, *args, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS…` in the repo, with the test's environment plus `env`, output captured."""
    from tests.helpers import REPO

    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip


def photo_folder(root: Path, names: tuple[str, ...] = PHOTOS[:3]) -> Path:
    """root/photos holding scikit-image photos as JPEG files, one per name."""
    from tests.helpers import photo_jpeg

    folder = root / "photos"
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.jpg").write_bytes(photo_jpeg(name))
    return folder


def pausing_cli(argv: list[str]) -> int:
    """`python -m extract ARGS…` (argv: BATCHES, then ARGS) that stops after journaling BATCHES batches.

    The run then waits for a signal, for ever: the test decides when it is interrupted or killed, and the
    run cannot finish first however slow or busy the machine is (sending the signal once the journal holds
    the entries was a race the run sometimes won). It stops right after a complete write, between batches,
    where a real interrupt may land too. The one-second sleeps do not time anything: a SIGINT that arrives
    just before a sleep starts is acted on when it ends instead of being lost, as it could be in one long wait.
    """
    from extract.__main__ import main
    from extract.writers import JobOutput

    # A process started in the background by a shell without job control (`cmd &` in a script, nohup, some CI
    # runners) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the interrupt
    # the test sends would be dropped and the held run would wait for ever. The test wants Ctrl-C's behaviour.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    batches, args = int(argv[0]), argv[1:]
    write = JobOutput.write
    written = 0

    def write_then_hold(self: JobOutput, result) -> None:
        nonlocal written
        write(self, result)
        written += 1
        while written >= batches:
            time.sleep(1)

    JobOutput.write = write_then_hold
    return main(args)


if __name__ == "__main__":
    sys.exit(pausing_cli(sys.argv[1:]))
