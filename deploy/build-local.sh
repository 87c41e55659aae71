#!/usr/bin/env bash
# Build both images and run them once, on a machine whose Docker cannot pull base images (no registry reachable):
# the python base image is made here with debootstrap (Debian bookworm's Python 3.11) and imported under the tag
# the Dockerfile names; pip inside the build reaches PyPI through the host's network and CA bundle. Then it runs
# the API image against a throwaway Redis, checks /readyz, runs one CPU job in the worker image (submitted with
# `gif submit` from this checkout's .venv) and removes what it started.
#
#   sudo deploy/build-local.sh            # needs docker (dockerd running), debootstrap, redis-server, .venv
#
# Where base images can be pulled, skip all this: `docker compose up --build`.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-python:3.11-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://pypi.org/simple}  # download.pytorch.org may be out of reach
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PORT=${PORT:-18000}
REDIS_PORT=${REDIS_PORT:-16379}
NAME=gif-build-local
work=$(mktemp -d)

cleanup() {
  docker rm -f "$NAME-api" "$NAME-worker" >/dev/null 2>&1 || true
  docker volume rm "$NAME-artifacts" >/dev/null 2>&1 || true
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

if docker image inspect "$BASE" >/dev/null 2>&1; then
  step "base image $BASE is here"
elif docker pull "$BASE" >/dev/null 2>&1; then
  step "pulled $BASE"
else
  step "making $BASE with debootstrap (no registry)"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log"
  ln -sf python3 "$work/rootfs/usr/bin/python"
  ln -sf pip3 "$work/rootfs/usr/bin/pip"
  rm -f "$work"/rootfs/usr/lib/python3*/EXTERNALLY-MANAGED  # the image is the environment, as in python:*-slim
  cp "$CA_BUNDLE" "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$work/rootfs/etc/pip.conf"
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb
  tar -C "$work/rootfs" -c . | docker import - "$BASE"
fi

for target in api worker; do
  step "docker build --target $target -t gif-$target"
  DOCKER_BUILDKIT=0 docker build --network host --target "$target" -t "gif-$target" \
    --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" . | tail -n 3
done
docker image ls gif-api
docker image ls gif-worker

step "Redis on 127.0.0.1:$REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --dir "$work"
env=(-e "GIF_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0" -e "GIF_PORT=$PORT" -e GIF_HOST=127.0.0.1)
volume=(-v "$NAME-artifacts:/var/lib/gif/artifacts")

step "API image: /readyz"
docker run -d --name "$NAME-api" --network host "${env[@]}" "${volume[@]}" gif-api >/dev/null
for _ in $(seq 60); do curl -fsS "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break; sleep 1; done
echo
curl -fsS "http://127.0.0.1:$PORT/readyz"
echo

step "worker image: one CPU job"
docker run -d --name "$NAME-worker" --network host "${env[@]}" "${volume[@]}" -e GIF_WORKER_DEVICE=cpu gif-worker >/dev/null
.venv/bin/gif demo-assets --out "$work/demo" >/dev/null
GIF_SERVER="http://127.0.0.1:$PORT" .venv/bin/gif submit --spec "$work/demo/job.json" \
  --model "$work/demo/model.safetensors" --architecture "$work/demo/architecture.json" \
  --train-data "$work/demo/train.safetensors" --eval-data "$work/demo/eval.safetensors" \
  --wait --out "$work/edited.safetensors"
docker logs "$NAME-worker" 2>&1 | grep -m 3 '"job' || true
step "done: both images built and ran"
