# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target api    -t hpo-service-api .     # REST API, migrations, optuna-dashboard (no torch)
#   docker build --target worker -t hpo-service-worker .  # GPU trainer: adds torch (CUDA wheels from PyPI)
#
# Layer order keeps rebuilds cheap: the dependencies are installed from pyproject.toml +
# constraints.txt alone, so editing the Python sources only rebuilds the last small layers.
# The CUDA runtime comes with the torch wheels; the host needs only the NVIDIA driver and
# the NVIDIA Container Toolkit.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
# base: Python, an unprivileged user, and the core (API) dependencies.
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HPO_DATA_DIR=/data

RUN groupadd --system --gid 10001 hpo \
 && useradd --system --uid 10001 --gid hpo --create-home --home-dir /home/hpo --shell /usr/sbin/nologin hpo \
 && mkdir -p /data /artifacts \
 && chown hpo:hpo /data /artifacts

WORKDIR /app

# Only the files that decide the dependency set: the install below stays cached until they change.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; open('requirements.txt', 'w').write('\n'.join(p['dependencies']) + '\n')" \
 && pip install -c constraints.txt -r requirements.txt

# ---------------------------------------------------------------------------------------
# wheel: builds the project's own wheel; only the wheel leaves this stage.
FROM base AS wheel
COPY . /src
RUN pip wheel --no-deps --wheel-dir /wheels /src

# ---------------------------------------------------------------------------------------
# api: `hpo serve` (default), `hpo migrate`, `hpo token ...`, `optuna-dashboard`.
FROM base AS api
# API_EXTRAS=gp adds torch, which the GP sampler fits with in the API process (README, Samplers);
# with PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu it is the CPU wheel.
ARG API_EXTRAS=""
COPY --from=wheel /wheels/ /tmp/wheels/
# Resolves against what base installed; pip only adds the project itself (and the extras' packages).
RUN set -eu; whl="$(ls /tmp/wheels/*.whl)"; \
    pip install -c constraints.txt "${whl}${API_EXTRAS:+[$API_EXTRAS]}" \
 && rm -rf /tmp/wheels

ENV HPO_HOST=0.0.0.0 \
    HPO_PORT=8000

USER hpo
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HPO_PORT', '8000'), timeout=4)" || exit 1
CMD ["hpo", "serve"]

# ---------------------------------------------------------------------------------------
# worker: pulls trials from the API over HTTP and trains them with PyTorch.
FROM base AS worker

# The torch layer is the big one (several GB with the CUDA libraries): it depends only on
# pyproject.toml and constraints.txt, so it is rebuilt only when they change.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; open('requirements-worker.txt', 'w').write('\n'.join(p['optional-dependencies']['worker']) + '\n')" \
 && pip install -c constraints.txt -r requirements.txt -r requirements-worker.txt

COPY --from=wheel /wheels/ /tmp/wheels/
# Installs `.[worker]` under the constraints; every dependency is already in place.
RUN set -eu; whl="$(ls /tmp/wheels/*.whl)"; \
    pip install -c constraints.txt "${whl}[worker]" \
 && rm -rf /tmp/wheels

# Which GPU features the NVIDIA Container Toolkit exposes (CUDA compute + nvidia-smi).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER hpo
CMD ["hpo", "worker"]
