# syntax=docker/dockerfile:1
#
# vaefusion BIDS App: the GPU image (CUDA 13, PyTorch, RAPIDS cuML).
#
#   docker build -t vaefusion/vaefusion:0.1.0 .
#   docker run --rm --gpus all --read-only --tmpfs /tmp -u "$(id -u):$(id -g)" \
#       -v "$BIDS":/data:ro -v "$OUT":/out vaefusion/vaefusion:0.1.0 /data /out participant
#
# Base image: nvidia/cuda:13.0.2-base-ubuntu22.04, because
#  - torch 2.13.0 on PyPI is a CUDA 13.0 build that brings its CUDA user-space libraries as
#    wheels (cuda-toolkit 13.0.3, cuDNN, NCCL), and cuml-cu13 does the same (cuda-toolkit 13.*,
#    cupy-cuda13x[ctk]); the "runtime"/"cudnn-runtime" flavours would only add a second copy of
#    several GB of libraries. The "base" flavour adds what the wheels do not: the NVIDIA
#    container-toolkit contract (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES, and
#    NVIDIA_REQUIRE_CUDA, so that a too-old host driver fails with a clear message) and cudart.
#  - CUDA 13 rather than 12: cuml-cu12 requires cuda-toolkit==12.* while torch 2.13.0 requires
#    cuda-toolkit==13.0.3, which pip cannot install side by side. The host needs an NVIDIA
#    driver >= 580 (R580).
#  - not a RAPIDS image (rapidsai/base): conda-based, about twice the size, with its own
#    Python stack; the plain pip install below is exactly what .ci/container_smoke.sh replays
#    (with CPU torch) on every CI run, so the image cannot drift from what CI tests.
#  - Ubuntu 22.04 ships python3.11 (universe): Python comes from the distribution, with its
#    security updates, instead of a PPA or a source build.

FROM nvidia/cuda:13.0.2-base-ubuntu22.04 AS python
ARG DEBIAN_FRONTEND=noninteractive
ENV LANG=C.UTF-8 \
    LC_ALL=C.UTF-8
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
# build: a virtualenv in /opt/venv with pinned torch/cuML and the package; only the venv is
# copied into the final image (no sources, no pip cache, no build tools).
FROM python AS build
ARG PIP_VERSION=26.3
ARG TORCH_VERSION=2.13.0
ARG CUML_VERSION=26.10.0
ARG BIDS_VALIDATOR_VERSION=3.0.2
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# .dockerignore is an allow-list: setup.cfg, pyproject.toml, README.md, LICENSE, bids_app/
COPY . /src
# The one install line (.ci/container_smoke.sh parses and replays it with CPU torch):
# cuml-cu13 is the GPU extra; setup.cfg's [gpu] extra still names cuml-cu12, which cannot be
# installed together with torch 2.13.0 (see above), so it is named here explicitly.
# bids-validator-deno (a pip package that ships the validator binary) validates the input.
RUN pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" "cuml-cu13==${CUML_VERSION}" \
        "bids-validator-deno==${BIDS_VALIDATOR_VERSION}" /src \
    && python -c "import importlib.util as u, torch, vaefusion; assert u.find_spec('cuml'); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'vaefusion', vaefusion.__version__)"

# ---------------------------------------------------------------------------------------------
FROM python AS app
ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="vaefusion" \
      org.opencontainers.image.description="BIDS App: fuse NeuroMark ICN maps and gray-matter volumes with one shared 3D VAE; evaluate patient-vs-control classification against PCA baselines" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/vaefusion/vaefusion" \
      org.opencontainers.image.url="https://github.com/vaefusion/vaefusion" \
      org.opencontainers.image.documentation="https://github.com/vaefusion/vaefusion#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="vaefusion" \
      org.opencontainers.image.authors="The vaefusion developers" \
      org.opencontainers.image.ref.name="vaefusion/vaefusion:${VERSION}" \
      org.opencontainers.image.base.name="docker.io/nvidia/cuda:13.0.2-base-ubuntu22.04"

# A non-root user with a real, writable HOME (for plain `docker run`); every cache is sent to
# /tmp below so that `docker run --read-only --tmpfs /tmp` and Singularity work too.
RUN groupadd --gid 1000 vaefusion \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/vaefusion \
        --shell /bin/bash vaefusion

COPY --from=build /opt/venv /opt/venv
# Links in /usr/local/bin keep the commands found when a login shell resets PATH (Boutiques
# runs `/bin/sh -l`); /version holds the package version, checked against VERSION.
RUN ln -s /opt/venv/bin/vaefusion /usr/local/bin/vaefusion \
    && ln -s /opt/venv/bin/vaefusion-simulate /usr/local/bin/vaefusion-simulate \
    && /opt/venv/bin/python -c "import vaefusion; print(vaefusion.__version__)" > /version \
    && test "$(cat /version)" = "${VERSION}"

# Threads: one per process unless --omp-nthreads says otherwise (nipype MultiProc runs
# several processes). Caches and configs go to /tmp (writable under --read-only --tmpfs /tmp
# and on HPC); nothing is downloaded at run time: the NeuroMark templates are package data,
# nipype's online version check is off, and no nilearn/TemplateFlow fetch is made.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/vaefusion \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    NUMEXPR_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/vaefusion/matplotlib \
    XDG_CACHE_HOME=/tmp/vaefusion/cache \
    XDG_CONFIG_HOME=/tmp/vaefusion/config \
    NUMBA_CACHE_DIR=/tmp/vaefusion/numba \
    CUPY_CACHE_DIR=/tmp/vaefusion/cupy \
    TORCH_HOME=/tmp/vaefusion/torch \
    TORCHINDUCTOR_CACHE_DIR=/tmp/vaefusion/torchinductor \
    TRITON_CACHE_DIR=/tmp/vaefusion/triton \
    NIPYPE_NO_ET=1 \
    NIPYPE_CONFIG_DIR=/tmp/vaefusion/nipype \
    NILEARN_DATA=/tmp/vaefusion/nilearn_data \
    TEMPLATEFLOW_HOME=/tmp/vaefusion/templateflow \
    DENO_DIR=/tmp/vaefusion/deno \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# numeric, so that runtimes that enforce non-root (runAsNonRoot) can check it
USER 1000:1000
# Without -w the work dir is /tmp/vaefusion_work_* (/out/../out_work is not writable): give -w on a
# scratch volume for real data (a tmpfs lives in memory).
WORKDIR /tmp
ENTRYPOINT ["vaefusion"]
CMD ["--help"]
