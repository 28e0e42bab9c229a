"""Batch extraction (`python -m extract`) over a generated collection of real photos and broken files.

Real things only: the CLI in a subprocess, the exported EfficientNet-Lite0 in ONNX Runtime, a real gunicorn
for --server, a local Ray with 2 CPUs for --engine ray, SIGINT and SIGKILL for resuming.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from engine.errors import TooLarge
from engine.settings import Settings, SettingsError, read_api_key_file
from extract.__main__ import main
from extract.errors import UsageError
from extract.inputs import list_sources
from extract.local import decode_rows, failure_reason
from extract.parquet import read_features
from tests.helpers import REPO
from tests.integration.conftest import Server
from tests.integration.extract_helpers import cli, make_collection, photo_folder

pytestmark = pytest.mark.integration
MODEL = "efficientnet_lite0"
COUNT = 240  # ~3-5 s of local extraction on 2 cores; enough batches of 32 to kill a run in the middle
LAYERS = ("stem", "stride4", "stride8", "stride16", "stride32", "head", "embedding", "logits")


def extract(*args, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return cli("extract", *args, "--no-progress", env=env, timeout=timeout)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def close(actual: np.ndarray, expected: np.ndarray) -> bool:
    """The export's own tolerance: 1e-4 absolute for activations of order one, relative above."""
    return bool(np.all(np.abs(actual - expected) <= 1e-4 * np.maximum(1.0, np.abs(expected))))


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("collection")
    files = make_collection(root, COUNT)
    listing = root / "more.txt"  # relative to the list file; one repeat of a folder image, one missing file
    listing.write_text("# extra inputs\nnotes.txt\n\ngone.jpg\nphotos/chelsea/set0/img0000.JPG\n")
    everything = [*files["good"], *files["bad_in_folder"], *files["text"], *files["missing"]]
    return {"root": root, "args": [root / "photos", listing], "files": files,
            "inputs": sorted(str(path) for path in everything)}  # fmt: skip


@pytest.fixture(scope="module")
def reference(collection, models_dir, tmp_path_factory) -> Path:
    """One uninterrupted local run: the files every other run is compared with."""
    out = tmp_path_factory.mktemp("reference") / "features"
    result = extract(*collection["args"], "--model", MODEL, "--models-dir", models_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"{len(collection['inputs'])} inputs: {COUNT} rows, 5 failed" in result.stdout
    assert "local engine on CPUExecutionProvider)" in result.stdout  # read back from the session
    return out


def load(out: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    paths = [row["path"] for row in read_csv(out / "index.csv")]
    return paths, {layer: np.load(out / f"{layer}.npy") for layer in LAYERS if (out / f"{layer}.npy").exists()}


def test_list_sources_folders_globs_and_lists(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.JPG", "a/b/y.png", "a/b/z.webp", "a/readme.md", "c.jpeg"):
        (tmp_path / name).write_bytes(b"")
    table = tmp_path / "a" / "list.csv"
    table.write_text("label,Path\ncat,b/y.png\ndog,../elsewhere.jpg\n")
    found = list_sources([tmp_path / "a", str(tmp_path / "*.jpeg"), table, tmp_path / "a" / "x.JPG"])
    expected = ["a/b/y.png", "a/b/z.webp", "a/x.JPG", "c.jpeg", "elsewhere.jpg"]
    assert found == sorted(str(tmp_path / name) for name in expected)  # sorted, repeats once, lists kept as given


def tree(root: Path, files: list[str], links: dict[str, str]) -> Path:
    """Empty files and symlinks (name -> target, as written) under root."""
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    return root


def listed(root: Path, *arguments: str) -> list[str]:
    """list_sources of arguments relative to root, as paths relative to root; a walk still going after 10 s
    (a loop: os.walk never finished on two links to '.') fails the test instead of hanging it."""

    def still_walking(*_) -> None:
        raise AssertionError("list_sources still walking after 10 s")  # not TimeoutError: os.walk ate OSErrors

    previous = signal.signal(signal.SIGALRM, still_walking)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        found = list_sources([str(root / argument) for argument in arguments])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert all(path == os.path.normpath(path) and os.path.isabs(path) for path in found), found
    return [os.path.relpath(path, root) for path in found]


def test_list_sources_a_link_back_up_the_tree_lists_each_file_once(tmp_path):
    root = tree(tmp_path, ["x.jpg", "sub/y.png", "sub/deeper/z.webp"], {"sub/loop": "..", "sub/deeper/up": "../.."})
    expected = ["sub/deeper/z.webp", "sub/y.png", "x.jpg"]  # was 41 times each, through sub/loop/sub/loop/...
    assert listed(root, ".") == expected
    assert listed(root, "**/*.*") == expected  # glob's own ** followed the loop too
    # from sub, x.jpg is only reached through a link: by the name that sorts first (deeper/up < loop)
    assert listed(root, "sub") == ["sub/deeper/up/x.jpg", "sub/deeper/z.webp", "sub/y.png"]


def test_list_sources_two_links_to_the_same_folder_finish(tmp_path):
    root = tree(tmp_path, ["x.jpg", "a/y.jpg"], {"here": ".", "again": ".", "a/top": ".."})
    assert listed(root, ".") == ["a/y.jpg", "x.jpg"]  # os.walk never finished: 2 links, 2^40 paths
    assert listed(root, "**") == ["a/y.jpg", "x.jpg"]
    assert listed(root, "*/*.jpg") == ["a/y.jpg", "again/x.jpg"]  # a one-level glob: x.jpg only through the links


def test_list_sources_a_link_to_a_sibling_folder_keeps_the_name_that_sorts_first(tmp_path):
    root = tree(tmp_path, ["shots/1.jpg", "shots/2.png", "shots/deep/3.jpg"], {"album": "shots", "zoo": "shots/deep"})
    expected = ["album/1.jpg", "album/2.png", "album/deep/3.jpg"]  # the link's name: not resolved
    assert listed(root, ".") == expected
    assert listed(root, "shots", "zoo", "album") == expected  # folder inputs are walked as one
    assert listed(root, "*/*.jpg", "*/*/*.jpg") == ["album/1.jpg", "album/deep/3.jpg"]
    listing = root / "list.txt"  # named explicitly: kept as written, whatever folder links they go through
    listing.write_text("zoo/3.jpg\nshots/deep/3.jpg\n")
    assert listed(root, "shots", "list.txt") == ["shots/1.jpg", "shots/2.png", "shots/deep/3.jpg", "zoo/3.jpg"]


def test_list_sources_dangling_self_and_unreadable_links_do_not_stop_the_walk(tmp_path, monkeypatch):
    root = tree(tmp_path, ["x.jpg", "locked/y.jpg"], {"gone": "nowhere", "lost.jpg": "nowhere.jpg", "self": "self",
                                                      "self.png": "self.png", "in": "locked"})  # fmt: skip
    listed_by = os.scandir

    def scandir(path):  # permission denied (a real chmod would not stop the tests when they run as root)
        if os.path.basename(path) in {"locked", "in"}:
            raise PermissionError(13, "Permission denied", path)
        return listed_by(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert listed(root, ".") == ["lost.jpg", "self.png", "x.jpg"]  # image names that cannot be read: failures later
    with pytest.raises(UsageError, match="is not a file, a folder or a glob pattern"):
        listed(root, "self")
    with pytest.raises(UsageError, match="no images found"):
        listed(root, "locked")


def test_every_input_is_a_row_or_a_failure(collection, reference, lite0_dir):
    paths, arrays = load(reference)
    failures = {row["path"]: row["reason"] for row in read_csv(reference / "failed.csv")}
    assert paths == sorted(paths) and not set(paths) & set(failures)
    assert sorted(paths + list(failures)) == collection["inputs"]
    root = collection["root"]
    assert failures == {
        str(root / "gone.jpg"): "cannot read the file: No such file or directory",
        str(root / "notes.txt"): "not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF are)",
        str(root / "photos/broken/empty.png"): "the file is empty (0 bytes)",
        str(root / "photos/broken/random.jpg"): "not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF are)",
        str(root / "photos/broken/truncated.jpg"): failures[str(root / "photos/broken/truncated.jpg")],
    }
    assert failures[str(root / "photos/broken/truncated.jpg")].startswith("image could not be decoded (truncated")
    assert [row["row"] for row in read_csv(reference / "index.csv")] == [str(i) for i in range(COUNT)]
    widths = {"stem": 32, "stride4": 24, "stride8": 40, "stride16": 112, "stride32": 320, "head": 1280,
              "embedding": 1280, "logits": 1000}  # fmt: skip
    for layer, width in widths.items():
        assert arrays[layer].shape == (COUNT, width) and arrays[layer].dtype == np.float32
        assert np.isfinite(arrays[layer]).all() and np.abs(arrays[layer]).sum(axis=1).min() > 0
    assert (reference / "model.json").read_text() == (lite0_dir / "model.json").read_text()
    summary = json.loads((reference / "extract.json").read_text())
    assert summary["rows"] == COUNT and summary["failed"] == 5 and summary["job"]["layers"] == list(LAYERS)
    assert not (reference / ".partial").exists()


def test_rows_equal_the_service(reference, server):
    paths, arrays = load(reference)
    picks = [0, 1, 5, 17, 60, 119, 200, COUNT - 1]  # JPEG, PNG with alpha, WebP, grey, upper-case suffix...
    files = [("image", (Path(paths[i]).name, Path(paths[i]).read_bytes())) for i in picks]
    response = requests.post(f"{server.url}/v1/models/{MODEL}/features", files=files,
                             data={"encoding": "base64", "dtype": "float32"}, timeout=120)  # fmt: skip
    assert response.status_code == 200, response.text
    for i, result in zip(picks, response.json()["results"], strict=True):
        for level in result["features"].values():
            for layer, encoded in level.items():
                served = np.frombuffer(base64.b64decode(encoded["data"]), dtype="<f4").reshape(encoded["shape"])
                assert close(arrays[layer][i], served), (paths[i], layer)


def journal_entries(out: Path) -> int:
    try:
        return len((out / ".partial" / "journal.jsonl").read_text().splitlines()) - 1
    except OSError:
        return 0


def start_and_stop(args: list, out: Path, stop: signal.Signals, batches: int) -> tuple[int, str]:
    """Start the CLI held after `batches` more journaled batches (pausing_cli), send it `stop` there; (status, stderr).

    The run cannot finish before the signal, so the outcome does not depend on how busy the machine is: the
    deadline only turns a run that never gets there into a failure instead of a hang.
    """
    expected = journal_entries(out) + batches
    command = [
        sys.executable,
        "-m",
        "tests.integration.extract_helpers",
        str(batches),
        *map(str, args),
        "--no-progress",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while journal_entries(out) < expected and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, f"the run ended before it could be stopped: {process.communicate()}"
    assert journal_entries(out) == expected, f"no {expected} journal entries after 300 s"
    process.send_signal(stop)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"the run did not end within 120 s of {stop.name}; its stderr:\n{stderr}") from None
    return process.returncode, stderr


def test_interrupted_and_killed_runs_resume_to_identical_files(collection, reference, models_dir, tmp_path):
    out = tmp_path / "features"
    args = [*collection["args"], "--model", MODEL, "--models-dir", models_dir, "--out", out]

    status, stderr = start_and_stop(args, out, signal.SIGINT, batches=1)
    assert status == 130 and "rerun the same command to resume" in stderr, stderr
    assert journal_entries(out) == 1  # what was written before the interrupt, and nothing after it

    status, _ = start_and_stop(args, out, signal.SIGKILL, batches=2)
    assert status == -signal.SIGKILL
    assert journal_entries(out) == 3
    with open(out / ".partial" / "journal.jsonl", "a") as journal:
        journal.write('{"rows": [[0, 24')  # a line torn by the kill: claims nothing

    resumed = extract(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{3 * 32} done by an earlier run" in resumed.stdout  # three batches of 32 rows, the torn line ignored
    for name in sorted(path.name for path in reference.iterdir()):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in reference.iterdir())

    again = extract(*args)
    assert again.returncode == 0 and "already holds this extraction" in again.stdout


def test_server_mode_matches_local(collection, reference, models_dir, tmp_path):
    """A fresh server (not waited for: connection errors and 503 are retried), an API key, a batch larger than
    the server's limit (413: halved), bad files in batches (422: named, the rest resent); a wrong key: exit 2."""
    key_file = tmp_path / "key"
    key_file.write_text("extract-test-key\n")
    server = Server(models_dir, FEATURES_API_KEY="extract-test-key", FEATURES_MAX_IMAGES="8")
    try:
        out = tmp_path / "features"
        common = [*collection["args"], "--model", MODEL, "--server", server.url, "--models-dir", models_dir]
        result = extract(*common, "--out", out, "--api-key-file", key_file, "--batch-size", "16", "--workers", "3")
        assert result.returncode == 0, result.stderr + server.output()
        log = server.output()
        key_file.write_text("wrong")  # the key from FEATURES_API_KEY_FILE this time, through the same Settings
        refused = extract(*common, "--out", tmp_path / "refused", env={"FEATURES_API_KEY_FILE": str(key_file)})
    finally:
        server.stop()
    assert "-> 413" in log and "-> 422" in log
    assert "server engine on CPUExecutionProvider)" in result.stdout  # what the server reported
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and "API key" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()
    for name in ("index.csv", "failed.csv", "model.json"):
        assert (out / name).read_text() == (reference / name).read_text(), name
    _, local = load(reference)
    _, remote = load(out)
    for layer in LAYERS:
        assert close(remote[layer], local[layer]), layer


def test_ray_engine_matches_local(collection, reference, models_dir, tmp_path):
    """A local Ray with 2 CPUs and 2 actors, on a small list (Ray's start-up dominates), mid levels only:
    the actors run the prefix graph that ends at stride16, which must equal the full graph's numbers."""
    good = sorted(collection["files"]["good"])[::12]
    listing = tmp_path / "some.txt"
    listing.write_text("\n".join(map(str, [*good, collection["root"] / "notes.txt"])) + "\n")
    out = tmp_path / "features"
    result = extract(listing, "--model", MODEL, "--models-dir", models_dir, "--out", out, "--engine", "ray",
                     "--workers", "2", "--batch-size", "8", "--levels", "mid", timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{len(good) + 1} inputs: {len(good)} rows, 1 failed" in result.stdout
    assert "ray engine on CPUExecutionProvider)" in result.stdout  # read back in the actors
    paths, arrays = load(out)
    assert paths == [str(path) for path in good] and set(arrays) == {"stride8", "stride16"}
    reference_paths, reference_arrays = load(reference)
    rows = [reference_paths.index(path) for path in paths]
    for layer, array in arrays.items():
        assert close(array, reference_arrays[layer][rows]), layer


def test_parquet_float16_round_trips_to_the_npy_numbers(collection, reference, models_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "features"
    result = extract(*collection["args"], "--model", MODEL, "--models-dir", models_dir, "--out", out,
                     "--format", "parquet", "--dtype", "float16")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == [
        "extract.json", "failed.csv", "features.parquet", "index.csv", "model.json"]  # fmt: skip
    head = pq.read_schema(out / "features.parquet").field("head").type
    assert pa.types.is_fixed_size_list(head) and head.list_size == 1280 and head.value_type == pa.float16()
    paths, arrays = read_features(out / "features.parquet")
    reference_paths, reference_arrays = load(reference)
    assert paths == reference_paths
    for layer in LAYERS:
        assert arrays[layer].dtype == np.float16
        assert np.array_equal(arrays[layer], reference_arrays[layer].astype(np.float16)), layer


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "no INPUT given"),
        (["{root}/nowhere"], "is not a file, a folder or a glob pattern"),
        (["{root}/empty"], "no images found"),
        (["{root}/photos", "--model", "resnet"], "no model 'resnet'"),
        (["{root}/photos", "--layers", "stem,nope"], "has no layer 'nope'; layers are stem, stride4"),
        (["{root}/photos", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["{root}/table.csv"], "has no 'path' column"),
        (["{root}/photos", "--server", "localhost:8000"], "must be an http:// or https:// URL"),
        (["{root}/photos", "--out", "{root}/photos"], "is not empty and holds no extraction"),
    ],
)
def test_bad_usage_is_one_error_line_and_exit_2(arguments, message, collection, models_dir, tmp_path, capsys):
    root = collection["root"]
    (root / "empty").mkdir(exist_ok=True)
    (root / "table.csv").write_text("name,label\nx.jpg,cat\n")
    argv = [item.format(root=root) for item in arguments]
    if "--model" not in argv:
        argv += ["--model", MODEL]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main([*argv, "--models-dir", str(models_dir), "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert not (tmp_path / "out").exists()


def test_an_out_dir_holding_another_job_is_refused_unless_overwrite(collection, models_dir, tmp_path, capsys):
    images = sorted(collection["files"]["good"])[:10]
    out = tmp_path / "features"
    shutil.copytree(images[0].parent, tmp_path / "few")
    common = [str(tmp_path / "few"), "--model", MODEL, "--models-dir", str(models_dir), "--out", str(out),
              "--no-progress"]  # fmt: skip
    assert main(common) == 0
    assert main([*common, "--pooling", "max", "--layers", "stem"]) == 2
    assert "holds a different extraction (it differs in layers, pooling); use --overwrite" in capsys.readouterr().err
    assert main([*common, "--pooling", "max", "--layers", "stem", "--overwrite"]) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "extract.json", "failed.csv", "index.csv", "model.json", "stem.npy"]  # fmt: skip
    assert json.loads((out / "extract.json").read_text())["job"]["pooling"] == "max"


def test_a_folder_with_loop_links_extracts_each_image_once(collection, models_dir, tmp_path):
    images = sorted(collection["files"]["good"])[:5]
    folder = tmp_path / "linked"
    (folder / "sub").mkdir(parents=True)
    placed = [folder / ("sub" if index % 2 else "") / image.name for index, image in enumerate(images)]
    for image, path in zip(images, placed, strict=True):
        shutil.copy(image, path)
    os.symlink("..", folder / "sub" / "loop")  # each image 41 times before
    os.symlink(".", folder / "here")  # with a second link to '.': a run that never started
    os.symlink(".", folder / "there")
    out = tmp_path / "features"
    result = extract(folder, "--model", MODEL, "--models-dir", models_dir, "--out", out, "--layers", "embedding")
    assert result.returncode == 0, result.stderr
    assert "5 inputs: 5 rows, 0 failed" in result.stdout
    assert [row["path"] for row in read_csv(out / "index.csv")] == sorted(map(str, placed))
    assert np.load(out / "embedding.npy").shape == (5, 1280)


def test_a_file_that_cannot_be_used_is_a_row_with_the_core_s_own_words(lite0_manifest, tmp_path):
    """Any FeaturesError of one image (not only ImageError) is a failed.csv reason, in one place."""
    big = tmp_path / "big.png"
    Image.new("RGB", (100, 80), "red").save(big)
    good, batch, failed = decode_rows([0, 1], [str(big), str(tmp_path / "gone.jpg")], lite0_manifest.preprocess, 5000)
    assert good == [] and batch is None
    assert failed == [(0, "image is 100x80 = 8000 pixels, above the limit of 5000"),
                      (1, "cannot read the file: No such file or directory")]  # fmt: skip
    assert failure_reason(TooLarge("over the limit of 3 pixels", limit=3)) == "over the limit of 3 pixels"
    assert failure_reason(ValueError("odd")) == "ValueError: odd"


def test_api_key_files_are_read_by_one_helper_for_the_settings_and_the_cli(tmp_path, capsys):
    key = tmp_path / "key"
    key.write_text("  the-key \n")
    assert read_api_key_file(key, "--api-key-file") == "the-key"
    assert Settings.from_env({"FEATURES_API_KEY_FILE": str(key)}).api_key == "the-key"
    assert Settings.from_env({"FEATURES_API_KEY": "direct", "FEATURES_API_KEY_FILE": str(key)}).api_key == "direct"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    folder = photo_folder(tmp_path, ("chelsea",))
    for path, words in (
        (tmp_path / "missing", "cannot read {} {}: No such file or directory"),
        (empty, "{} {} is empty"),
    ):
        with pytest.raises(SettingsError) as raised:
            Settings.from_env({"FEATURES_API_KEY_FILE": str(path)})
        assert raised.value.detail == words.format("FEATURES_API_KEY_FILE", path)
        argv = [str(folder), "--model", MODEL, "--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9",
                "--api-key-file", str(path), "--no-progress"]  # fmt: skip
        assert main(argv) == 2
        assert capsys.readouterr().err == f"error: {words.format('--api-key-file', path)}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("missing", "options", "feature"),
    [
        ("tqdm", [], "the progress bar (turn it off with --no-progress)"),
        ("pyarrow", ["--format", "parquet", "--no-progress"], "--format parquet"),
        ("requests", ["--server", "http://127.0.0.1:9", "--no-progress"], "--server"),
        ("ray", ["--engine", "ray", "--no-progress"], "--engine ray"),
    ],
)
def test_a_missing_package_of_the_extract_extra_is_named_with_the_extra(
    missing, options, feature, models_dir, tmp_path, monkeypatch, capsys
):
    """The packages are installed here, so each is made unimportable (None in sys.modules) as if it were not,
    with its submodules that an earlier test imported."""
    for name in [missing, *(name for name in sys.modules if name.startswith(f"{missing}."))]:
        monkeypatch.setitem(sys.modules, name, None)
    folder = photo_folder(tmp_path, ("chelsea",))
    argv = [str(folder), "--model", MODEL, "--models-dir", str(models_dir), "--out", str(tmp_path / "out"), *options]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: {feature} needs {missing}: pip install 'cnn-features[extract]'\n"
    assert not (tmp_path / "out").exists()
