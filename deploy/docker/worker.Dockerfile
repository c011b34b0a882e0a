# syntax=docker/dockerfile:1.7
# kiln-worker: renders jobs on one GPU with libtorch (tch).
#
#   docker build -f deploy/docker/worker.Dockerfile -t kiln-worker .
#
# libtorch is PyPI's torch wheel (the version tch expects). Its default Linux
# wheel bundles the CUDA 13 user-space libraries (cuBLAS, cuDNN, NCCL, ...)
# under site-packages/nvidia, found through torch's own $ORIGIN rpaths, so the
# runtime image needs only the NVIDIA container runtime's driver mount, which
# the CUDA base image is set up for. The binary's rpath (worker/build.rs)
# points at $LIBTORCH/lib, so the virtual environment lives at the same path,
# /opt/kiln/venv, in the build and runtime stages.
#
# Stages: `chef` (Rust, Python, cargo-chef), `planner` (dependency recipe),
# `torch` (the wheel, a layer that changes only with TORCH_VERSION),
# `builder` (dependencies first, then the sources), then the runtime.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG TORCH_VERSION=2.11.0

FROM ${RUST_IMAGE} AS chef
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS torch
ARG TORCH_VERSION
# triton serves torch.compile in Python only; libtorch never loads it.
RUN python3 -m venv /opt/kiln/venv \
 && /opt/kiln/venv/bin/pip install --no-cache-dir --disable-pip-version-check "torch==${TORCH_VERSION}" \
 && /opt/kiln/venv/bin/pip uninstall -y triton \
 && /opt/kiln/venv/bin/python -c 'import torch,os;print(os.path.dirname(torch.__file__))' > /opt/kiln/libtorch-path

FROM torch AS builder
ENV LIBTORCH_CXX11_ABI=1
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    LIBTORCH=$(cat /opt/kiln/libtorch-path) \
    cargo chef cook --release --locked -p kiln-worker --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    LIBTORCH=$(cat /opt/kiln/libtorch-path) \
    cargo build --release --locked -p kiln-worker --bin kiln-worker \
 && strip target/release/kiln-worker

FROM ${CUDA_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin kiln \
 && mkdir -p /models && chown 10001:10001 /models
COPY --from=torch /opt/kiln /opt/kiln
COPY --from=builder /src/target/release/kiln-worker /usr/local/bin/kiln-worker
# Fail the build, not the first job, if a library does not resolve (or
# ldd itself fails).
RUN ldd /usr/local/bin/kiln-worker > /tmp/ldd && ! grep 'not found' /tmp/ldd && rm /tmp/ldd
USER 10001:10001
# Models are mounted here (read-only is enough); see deploy/README.md.
VOLUME ["/models"]
ENV KILN_MODELS=/models \
    RUST_LOG=info \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
ENTRYPOINT ["kiln-worker"]
CMD ["run", "--engines", "vqgan-clip,dalle", "--slots", "1", "--device", "auto", "--drain-timeout", "600"]
