# syntax=docker/dockerfile:1
# Two images from one file, both running as the non-root user "gif" (uid 10001):
#   docker build --target api    -t gif-api .     # the HTTP API; CPU-only torch (it never runs an edit)
#   docker build --target worker -t gif-worker .  # RQ worker; torch with CUDA, used when a GPU is visible
# docker-compose.yml builds and wires both, with Redis and a shared artifacts volume (or S3: docker-compose.s3.yml).

ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIF_STORAGE_DIR=/var/lib/gif/artifacts
RUN useradd --create-home --uid 10001 gif \
 && mkdir -p /var/lib/gif/artifacts && chown -R gif:gif /var/lib/gif
WORKDIR /app


FROM base AS source
COPY pyproject.toml README.md ./
COPY gif gif
COPY service service
COPY worker worker


FROM base AS api
ARG TORCH_VERSION TORCHVISION_VERSION
# The CPU build (the API never runs an edit); deploy/build-local.sh points this at PyPI where it is out of reach.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY --from=source /app /app
RUN pip install .
USER 10001
ENV GIF_HOST=0.0.0.0 GIF_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3)"]
CMD ["python", "-m", "service"]


FROM base AS worker
# PyPI's Linux wheels of torch bundle the CUDA runtime; the host needs only the NVIDIA driver and container toolkit.
ARG TORCH_VERSION TORCHVISION_VERSION
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY --from=source /app /app
RUN pip install .
USER 10001
CMD ["python", "-m", "worker"]
