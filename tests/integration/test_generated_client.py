"""/openapi.json as a contract that generators can use: a client generated from the live document with
openapi-python-client (configured as docs/api.md shows, and without a single warning) drives every operation
against a real gunicorn with an API key and a search index: every input form, binary answers, typed problems,
and the Open Inference Protocol under /v2 (JSON and binary bodies, typed V2Error answers).

One server and one generated client serve the whole module.
"""

from __future__ import annotations

import base64
import gzip
import importlib
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests
from PIL import Image
from safetensors.numpy import load as load_safetensors

from bench.servers import free_port
from engine.images import load_tensor
from service.openapi import openapi_document
from service.responses import NPZ, SAFETENSORS
from tests.helpers import REPO, photo_jpeg
from tests.integration.conftest import Server
from tests.integration.extract_helpers import cli, photo_folder

MODEL = "efficientnet_lite0"
API_KEY = "generated-client-key"
ADMIN_KEY = "generated-client-admin-key"
PACKAGE = "cnn_features_client"
GENERATOR = Path(sys.executable).parent / "openapi-python-client"
TROUBLE = re.compile(r"warning|could not", re.IGNORECASE)
V2 = "Open Inference Protocol"  # the tag of the /v2 operations


def documented_config() -> str:
    """The generator configuration docs/api.md gives (its section on generated clients), so the two cannot drift."""
    text = (REPO / "docs" / "api.md").read_text()
    section = text[text.index("## Generated clients") :]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


class _Photos(BaseHTTPRequestHandler):
    """Serves the cat photo at any path: an image URL for the service to fetch."""

    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def cat() -> bytes:
    return photo_jpeg("chelsea")


@pytest.fixture(scope="module")
def photo_url(cat):
    _Photos.body = cat
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _Photos)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/photos/cat.jpg"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def indexed(models_dir, tmp_path_factory) -> dict:
    """chelsea, coffee and astronaut, extracted at the head layer into an embedded search index."""
    root = tmp_path_factory.mktemp("generated-client-index")
    photos = photo_folder(root)
    index = root / "index"
    result = cli("extract", photos, "--model", MODEL, "--models-dir", models_dir, "--out", root / "out",
                 "--index", index, "--layers", "head", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {"index": index, "chelsea": photos / "chelsea.jpg"}


@pytest.fixture(scope="module")
def served_models(models_dir, tmp_path_factory) -> Path:
    """A copy of the session's export, which the reload test may break for a moment."""
    copy = tmp_path_factory.mktemp("generated-client-models") / "models"
    shutil.copytree(models_dir, copy)
    return copy


@pytest.fixture(scope="module")
def server(served_models, indexed):
    instance = Server(served_models, FEATURES_API_KEY=API_KEY, FEATURES_ADMIN_KEY=ADMIN_KEY,
                      FEATURES_INDEX=str(indexed["index"]), FEATURES_MAX_IMAGES="4",
                      FEATURES_URL_ALLOW="127.0.0.1").wait_ready()  # fmt: skip
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def generated(server, tmp_path_factory):
    """The client package generated from the server's own /openapi.json, importable for the module's tests."""
    root = tmp_path_factory.mktemp("generated-client")
    document = requests.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert document.status_code == 200
    (root / "openapi.json").write_bytes(document.content)
    (root / "config.yml").write_text(documented_config())
    command = [str(GENERATOR), "generate", "--path", str(root / "openapi.json"), "--meta", "none",
               "--output-path", str(root / PACKAGE), "--config", str(root / "config.yml")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not [line for line in output.splitlines() if TROUBLE.search(line)], output
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def operation(tag: str, operation_id: str):
    """The generated module of an operation; its package is the tag in snake_case, as the generator names it."""
    package = re.sub(r"\W+", "_", tag).lower()
    return importlib.import_module(f"{PACKAGE}.api.{package}.{operation_id}")


@pytest.fixture(scope="module")
def models(generated):
    return importlib.import_module(f"{PACKAGE}.models")


@pytest.fixture(scope="module")
def types(generated):
    return importlib.import_module(f"{PACKAGE}.types")


@pytest.fixture(scope="module")
def File(types):
    return types.File


@pytest.fixture(scope="module")
def client(generated, server):
    """Authenticated; any status the document does not declare raises."""
    with authenticated(generated, server) as instance:
        yield instance


@pytest.fixture(scope="module")
def anonymous(generated, server):
    with generated.Client(server.url, raise_on_unexpected_status=True, timeout=httpx.Timeout(60)) as instance:
        yield instance


def authenticated(generated, server, token: str = API_KEY, **headers: str):
    """A generated client with the key (and headers: with_headers would change the shared connection's)."""
    return generated.AuthenticatedClient(server.url, token=token, headers=headers, raise_on_unexpected_status=True,
                                         timeout=httpx.Timeout(120))  # fmt: skip


def problem(answer, status: int, words: str = ""):
    """Assert a parsed answer is the generated Problem model with that status (and words in its detail)."""
    assert type(answer).__name__ == "Problem", answer
    assert answer.status == status and words in answer.detail, answer
    return answer


def jpeg_upload(File, data: bytes, name: str = "cat.jpg"):
    return File(payload=io.BytesIO(data), file_name=name, mime_type="image/jpeg")


# ---- the generation itself -------------------------------------------------------------------------------------


def test_every_documented_operation_and_schema_is_generated(generated, server, models):
    served = requests.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    document = served.json()
    assert document == json.loads(json.dumps(openapi_document()))
    for path, item in document["paths"].items():
        for method, op in item.items():
            module = operation(op["tags"][0], op["operationId"])
            assert hasattr(module, "sync_detailed"), f"{method.upper()} {path}"
    for name, schema in document["components"]["schemas"].items():  # one class each; Input is a union of three
        if schema.get("type") == "object" or "enum" in schema:
            assert hasattr(models, name), name


# ---- probes, catalogue, labels, metrics, the page -------------------------------------------------------------


def test_probes_catalogue_labels_metrics_and_page(client, anonymous, models):
    assert operation("probes", "get_health").sync(client=anonymous).status == "ok"
    assert operation("probes", "get_readiness").sync(client=anonymous).models == [MODEL]
    (summary,) = operation("models", "list_models").sync(client=client).models
    assert summary.name == MODEL and summary.ready and "embedding" in summary.levels.high
    detail = operation("models", "get_model").sync(MODEL, client=client)
    assert isinstance(detail, models.ModelDetail) and detail.sha256 == summary.sha256
    assert detail.layers[0].name == "stem" and detail.layers[0].level == models.Level.LOW
    assert detail.preprocess.size == [224, 224] and detail.input_.shape == [3, 224, 224]
    assert detail.quality is None and detail.verification.passed and detail.labels == 1000
    problem(operation("models", "get_model").sync("nope", client=client), 404, "no model 'nope'")
    labels = operation("models", "get_labels").sync(MODEL, client=client)
    assert len(labels.labels) == 1000 and labels.layer == "logits"
    assert "paths" in operation("probes", "get_openapi").sync(client=client).additional_properties

    metrics = operation("probes", "get_metrics").sync_detailed(client=client)
    assert "features_http_requests_total" in metrics.parsed
    (documented,) = openapi_document()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert metrics.headers["Content-Type"] == documented  # the exposition version prometheus_client sends
    assert "<html" in operation("pictures", "get_page").sync(client=anonymous).lower()


def test_the_api_key_is_required_and_its_absence_is_a_typed_401(generated, server, anonymous):
    problem(operation("models", "list_models").sync(client=anonymous), 401, "API key")
    with authenticated(generated, server, token="wrong") as wrong:
        problem(operation("models", "get_labels").sync(MODEL, client=wrong), 401)
    problem(operation("probes", "get_metrics").sync_detailed(client=anonymous).parsed, 401)


# ---- features: every input form, several poolings and top classes, binary answers ------------------------------


def test_every_input_form_gives_the_same_embedding(client, models, File, cat, photo_url, lite0_manifest):
    features = operation("features", "extract_features")
    encoded = base64.b64encode(cat).decode()
    tensor = load_tensor(cat, lite0_manifest.preprocess).astype("<f4")
    answers = {
        "multipart": features.sync(MODEL, client=client, body=models.FeaturesForm(
            image=[jpeg_upload(File, cat)], layers="embedding")),
        "json base64": features.sync(MODEL, client=client, body=models.FeaturesJSONRequest(
            inputs=[models.ImageInput(image=encoded, name="cat")], layers=["embedding"],
            encoding=models.Encoding.BASE64)),
        "json tensor": features.sync(MODEL, client=client, body=models.FeaturesJSONRequest(
            inputs=[models.TensorInput(tensor=models.InputTensor(
                shape=list(tensor.shape), data=base64.b64encode(tensor.tobytes()).decode()))], layers="embedding")),
        "raw body": features.sync(MODEL, client=client, body=File(payload=io.BytesIO(cat)), layers=["embedding"]),
        "json data uri": features.sync(MODEL, client=client, body=models.FeaturesJSONRequest(
            inputs=[models.UrlInput(url=f"data:image/jpeg;base64,{encoded}")], layers="embedding")),
        "json url": features.sync(MODEL, client=client, body=models.FeaturesJSONRequest(
            inputs=[models.UrlInput(url=photo_url, name="fetched")], layers="embedding")),
        "multipart url": features.sync(MODEL, client=client, body=models.FeaturesForm(
            url=[photo_url], layers="embedding")),
        "query url": features.sync(MODEL, client=client, url_query=[photo_url], layers=["embedding"]),
    }  # fmt: skip
    vectors = {}
    for form, answer in answers.items():
        assert isinstance(answer, models.FeaturesResponse), (form, answer)
        (result,) = answer.results
        array = result.features.high["embedding"]
        assert array.shape == [1280] and array.dtype == models.Dtype.FLOAT32, form
        if form == "json base64":
            vectors[form] = np.frombuffer(base64.b64decode(array.data), "<f4")
        else:
            vectors[form] = np.asarray(array.values, dtype=np.float32)
    names = {form: answer.results[0].name for form, answer in answers.items()}
    assert names["multipart"] == "cat.jpg" and names["json base64"] == "cat" and names["raw body"] is None
    assert names["json url"] == "fetched" and names["query url"] == "cat.jpg"
    for form, vector in vectors.items():
        np.testing.assert_allclose(vector, vectors["multipart"], atol=1e-5, err_msg=form)


def test_several_poolings_and_top_classes(client, types, File, cat):
    answer = operation("features", "extract_features").sync(
        MODEL, client=client, body=File(payload=io.BytesIO(cat)), levels=["low"], pooling=["avg", "max"], top=3
    )
    assert answer.options.pooling == "avg,max" and answer.options.top == 3
    (result,) = answer.results
    assert isinstance(result.features, types.Unset)  # several poolings: features_by_pooling instead
    by_pooling = result.features_by_pooling
    assert sorted(by_pooling.avg.low.additional_keys) == sorted(by_pooling.max_.low.additional_keys)
    assert np.max(by_pooling.max_.low["stem"].values) >= np.max(by_pooling.avg.low["stem"].values)
    assert [top.probability for top in result.top] == sorted((top.probability for top in result.top), reverse=True)
    assert "cat" in result.top[0].label


def test_binary_answers_and_406(generated, server, client, models, File, cat):
    features = operation("features", "extract_features")
    arguments = dict(body=models.FeaturesForm(image=[jpeg_upload(File, cat)], layers="stem,embedding", top=2))
    json_answer = features.sync(MODEL, client=client, **arguments)
    for media_type in (SAFETENSORS, NPZ):
        request = features._get_kwargs(MODEL, **arguments)  # the generated request, sent asking for a tensor file
        request["headers"]["Accept"] = media_type
        response = client.get_httpx_client().request(**request)
        assert response.status_code == 200 and response.headers["Content-Type"] == media_type
        if media_type == SAFETENSORS:
            tensors = load_safetensors(response.content)
        else:
            with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
                tensors = {name: archive[name] for name in archive.files}
        assert tensors["stem/avg"].shape == (1, 32) and tensors["top/index"].shape == (1, 2)
        expected = json_answer.results[0].features.high["embedding"].values
        np.testing.assert_allclose(tensors["embedding/avg"][0], expected, atol=1e-6)
        assert [int(i) for i in tensors["top/index"][0]] == [top.index for top in json_answer.results[0].top]
    with authenticated(generated, server, Accept="text/csv") as csv:
        problem(features.sync(MODEL, client=csv, **arguments), 406, "text/csv")


# ---- errors ---------------------------------------------------------------------------------------------------


def test_errors_are_typed_problems(client, models, File, cat):
    features = operation("features", "extract_features")
    encoded = base64.b64encode(cat).decode()

    def json_body(**options):
        return models.FeaturesJSONRequest(inputs=[models.ImageInput(image=encoded)], **options)

    bad = problem(features.sync(MODEL, client=client, body=json_body(pooling="sum")), 400, "pooling")
    assert bad.additional_properties == {} and bad.valid == ["none", "avg", "max"]
    unknown = problem(features.sync(MODEL, client=client, body=json_body(layers="fc9")), 404, "fc9")
    assert "stem" in unknown.valid
    # a body field carries its default, so the same option in the query as well is refused, as documented
    problem(features.sync(MODEL, client=client, body=json_body(), pooling=["max"]), 400, "given both")
    nameless = models.FeaturesForm(image=[File(payload=io.BytesIO(cat), mime_type="image/jpeg")])
    problem(features.sync(MODEL, client=client, body=nameless), 400, "has no filename")  # a part without a file name
    beside = features.sync(MODEL, client=client, body=models.FeaturesForm(image=[jpeg_upload(File, cat)]), top=1)
    assert "cat" in beside.results[0].top[0].label  # a query option that the form leaves unset is read
    five = models.FeaturesForm(image=[jpeg_upload(File, cat, f"{i}.jpg") for i in range(5)])
    assert problem(features.sync(MODEL, client=client, body=five), 413).limit == 4
    broken = problem(features.sync(MODEL, client=client, body=File(payload=io.BytesIO(b"not an image"))), 422)
    assert broken.index == 0
    closed = f"http://127.0.0.1:{free_port()}/gone.jpg"
    unfetched = problem(features.sync(MODEL, client=client, url_query=[closed]), 422)
    assert unfetched.url == closed and unfetched.index == 0
    problem(features.sync(MODEL, client=client, url_query=["ftp://example.org/cat.jpg"]), 400, "scheme")

    request = features._get_kwargs(MODEL, body=File(payload=io.BytesIO(cat)))
    request["headers"]["Content-Type"] = "text/plain"  # no generated body sends one; the answer still parses
    answer = features._build_response(client=client, response=client.get_httpx_client().request(**request))
    problem(answer.parsed, 415, "text/plain")


# ---- pictures --------------------------------------------------------------------------------------------------


def png_size(file) -> tuple[int, int]:
    image = Image.open(file.payload)
    assert image.format == "PNG"
    return image.size


def test_filter_and_map_pictures(client, models, File, cat):
    assert png_size(operation("pictures", "get_filters_png").sync(MODEL, "stem", client=client)) == (402, 202)
    maps = operation("pictures", "draw_maps_png")
    drawn = maps.sync(MODEL, "stride8", client=client, body=models.MapsForm(image=[jpeg_upload(File, cat)], k=4))
    assert png_size(drawn) == (916, 272)  # 4 tiles of 224 px in one row, under the caption
    assert png_size(maps.sync(MODEL, "stride8", client=client, body=File(payload=io.BytesIO(cat)), k=8)) == (916, 500)
    problem(maps.sync(MODEL, "logits", client=client, body=File(payload=io.BytesIO(cat))), 400, "no spatial map")


# ---- search ----------------------------------------------------------------------------------------------------


def test_search_catalogue_and_entry_pictures(client, models, File, indexed):
    query = indexed["chelsea"].read_bytes()
    answer = operation("search", "search_images").sync(
        MODEL, client=client, body=models.SearchForm(image=[jpeg_upload(File, query)], k=2)
    )
    assert answer.index.entries == 3 and answer.options.k == 2
    (nearest, second) = answer.results[0].neighbours.high["head"]
    assert nearest.path == str(indexed["chelsea"]) and nearest.score > 0.999 and second.score < nearest.score
    (collection,) = operation("search", "get_index_catalogue").sync(client=client).collections
    assert collection.model == MODEL and collection.searchable and collection.entries == 3
    thumbnail = operation("search", "get_entry_image").sync(nearest.id, client=client, size=64)
    assert max(Image.open(thumbnail.payload).size) == 64
    several = models.SearchJSONRequest(inputs=[models.ImageInput(image=base64.b64encode(query).decode())],
                                       pooling="avg,max")  # fmt: skip
    problem(operation("search", "search_images").sync(MODEL, client=client, body=several), 400, "one pooling")
    problem(operation("search", "get_entry_image").sync(999999, client=client), 404)


# ---- admin -----------------------------------------------------------------------------------------------------


def test_reload_with_the_admin_key_its_report_and_its_problem(generated, server, client, models, served_models):
    reload_models, get_model = operation("admin", "reload_models"), operation("models", "get_model")
    manifest = served_models / MODEL / "model.json"
    original = manifest.read_bytes()
    with authenticated(generated, server, token=ADMIN_KEY) as admin:
        report = reload_models.sync(client=admin)
        assert isinstance(report, models.ReloadReport), report
        outcome = report.models[MODEL]
        assert outcome.status == models.ReloadStatus.UNCHANGED and outcome.error is None
        assert outcome.sha256 == outcome.previous_sha256 and not report.other_workers_signalled  # one worker
        try:
            manifest.write_text("{")
            failed = reload_models.sync(client=admin)
        finally:
            manifest.write_bytes(original)
        assert type(failed).__name__ == "ReloadProblem" and failed.status == 422, failed
        assert failed.models[MODEL].status == models.ReloadStatus.FAILED and failed.models[MODEL].error
        assert failed.models[MODEL].sha256 == outcome.sha256  # still serving the export it had
        last = get_model.sync(MODEL, client=client).reload
        assert last.status == models.ReloadStatus.FAILED and last.error and last.at.tzinfo is not None
        assert reload_models.sync(client=admin).models[MODEL].status == models.ReloadStatus.UNCHANGED
        assert get_model.sync(MODEL, client=client).reload.status == models.ReloadStatus.UNCHANGED
    problem(reload_models.sync(client=client), 401, "admin key")  # the API key is not the admin key


# ---- the Open Inference Protocol (KServe V2) -------------------------------------------------------------------


def v2_error(answer, status: int, words: str = ""):
    """Assert a detailed answer is that status parsed as the generated V2Error (with words in its error)."""
    assert answer.status_code == status and type(answer.parsed).__name__ == "V2Error", answer
    assert words in answer.parsed.error, answer.parsed
    return answer.parsed


def image_input(models, *images: bytes, name: str = "image"):
    """The `image` input in JSON: BYTES [N], each image as base64 text."""
    data = [base64.b64encode(image).decode() for image in images]
    return models.V2InferInput(name=name, shape=[len(images)], datatype=models.V2Datatype.BYTES, data=data)


def test_v2_health_metadata_and_readiness(client, anonymous, models, lite0_manifest):
    for operation_id in ("v2_server_live", "v2_server_ready"):  # open, like /healthz
        assert operation(V2, operation_id).sync_detailed(client=anonymous).status_code == 200
    server = operation(V2, "v2_server_metadata").sync(client=client)
    assert server.name == "cnn-features" and server.extensions == ["binary_tensor_data"]
    v2_error(operation(V2, "v2_server_metadata").sync_detailed(client=anonymous), 401, "API key")
    fp32, shapes = models.V2Datatype.FP32, {layer.name: layer.shape for layer in lite0_manifest.layers}
    for prefix in ("v2_model", "v2_model_version"):  # /v2/models/{model_name} and …/versions/1
        metadata = operation(V2, f"{prefix}_metadata").sync(MODEL, client=client)
        assert isinstance(metadata, models.V2ModelMetadata) and metadata.versions == ["1"], metadata
        inputs = [(tensor.name, tensor.datatype, tensor.shape) for tensor in metadata.inputs]
        onnx = lite0_manifest.onnx
        assert inputs == [("image", models.V2Datatype.BYTES, [-1]), (onnx.input, fp32, [-1, *onnx.input_shape])]
        outputs = {tensor.name: tensor.shape for tensor in metadata.outputs}
        assert outputs["stem"] == [-1, *shapes["stem"]] and outputs["stem__avg"] == [-1, shapes["stem"][0]]
        assert {tensor.datatype for tensor in metadata.outputs} == {fp32}
        assert operation(V2, f"{prefix}_ready").sync_detailed(MODEL, client=client).status_code == 200
        v2_error(operation(V2, f"{prefix}_metadata").sync_detailed("nope", client=client), 404, "nope")
        v2_error(operation(V2, f"{prefix}_ready").sync_detailed("nope", client=client), 404, "nope")


def test_v2_infer_gives_the_v1_features_in_json_and_binary_bodies(client, models, types, File, cat):
    """One output asked for, stride8's average: what /v1 answers for the same image, whichever way it travels."""
    v1 = operation("features", "extract_features").sync(MODEL, client=client, body=File(payload=io.BytesIO(cat)),
                                                         layers=["stride8"])  # fmt: skip
    expected = np.asarray(v1.results[0].features.mid["stride8"].values, dtype=np.float32)
    asked = [models.V2InferRequestedOutput(name="stride8__avg")]
    infer, versioned = operation(V2, "v2_model_infer"), operation(V2, "v2_model_version_infer")

    request = models.V2InferRequest(id="cat-1", inputs=[image_input(models, cat)], outputs=asked)
    answer = infer.sync(MODEL, client=client, body=request)
    assert isinstance(answer, models.V2InferResponse), answer
    assert (answer.model_name, answer.model_version, answer.id) == (MODEL, "1", "cat-1")
    (output,) = answer.outputs
    assert (output.name, output.datatype, output.shape) == ("stride8__avg", models.V2Datatype.FP32, [1, expected.size])
    np.testing.assert_allclose(output.data, expected, atol=1e-5)
    packed = File(payload=io.BytesIO(gzip.compress(json.dumps(request.to_dict()).encode())))  # as tritonclient packs
    gzipped = infer.sync(MODEL, client=client, body=packed, content_encoding="gzip")
    np.testing.assert_allclose(gzipped.outputs[0].data, expected, atol=1e-5)

    def binary_body(binary_output: bool):
        """The image as raw BYTES after the JSON header, and that header's length."""
        header = json.dumps({
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": 4 + len(cat)}}],
            "outputs": [{"name": "stride8__avg", "parameters": {"binary_data": binary_output}}],
        }).encode()  # fmt: skip
        body = File(payload=io.BytesIO(header + struct.pack("<I", len(cat)) + cat))
        return {"body": body, "inference_header_content_length": len(header)}

    answer = versioned.sync(MODEL, client=client, **binary_body(binary_output=False))
    assert isinstance(answer, models.V2InferResponse), answer
    np.testing.assert_allclose(answer.outputs[0].data, expected, atol=1e-5)

    # a binary answer: the generated request, read as the document says (the generated parser reads JSON only)
    response = client.get_httpx_client().request(**versioned._get_kwargs(MODEL, **binary_body(binary_output=True)))
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/octet-stream"
    length = int(response.headers["Inference-Header-Content-Length"])
    header = models.V2InferResponse.from_dict(json.loads(response.content[:length]))
    (output,) = header.outputs
    assert isinstance(output.data, types.Unset) and output.parameters.binary_data_size == 4 * expected.size
    np.testing.assert_allclose(np.frombuffer(response.content[length:], "<f4"), expected, atol=1e-5)


def test_v2_errors_are_typed(client, models, cat):
    infer = operation(V2, "v2_model_infer")

    def ask(*images: bytes, model: str = MODEL, data: list[str] | None = None, **fields):
        given = image_input(models, *images)
        given.data = data or given.data
        return infer.sync_detailed(model, client=client, body=models.V2InferRequest(inputs=[given], **fields))

    unknown = [models.V2InferRequestedOutput(name="fc9")]
    v2_error(ask(cat, outputs=unknown), 400, "fc9")
    v2_error(ask(cat, model="nope"), 404, "nope")
    v2_error(ask(*[cat] * 5), 413, "limit is 4")
    v2_error(ask(b"not an image"), 422)
    v2_error(ask(cat, data=["not base64!"]), 400, "base64")
    request = infer._get_kwargs(MODEL, body=models.V2InferRequest(inputs=[image_input(models, cat)]))
    request["headers"]["Content-Encoding"] = "br"  # no generated request sends an encoding the document does not list
    v2_error(infer._build_response(client=client, response=client.get_httpx_client().request(**request)), 415, "br")
