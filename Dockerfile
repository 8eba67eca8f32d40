# syntax=docker/dockerfile:1
#
# tokensvc container image.
#
#   docker build -t tokensvc .
#   docker run -p 8080:8080 -v tokensvc-data:/var/lib/tokensvc tokensvc
#
# Without configuration it runs the embedded mode (SQLite + in-process lockout) in
# /var/lib/tokensvc; production sets TOKENSVC_DATABASE_URL, TOKENSVC_REDIS_URL, the KEK
# (TOKENSVC_KEK or TOKENSVC_KEK_FILE) and TOKENSVC_ADMIN_PASSWORD(_FILE), and runs
# `tokensvc migrate` once per release (e.g. `docker run --rm ... tokensvc migrate`).

# Both stages must use the same Python: the venv copied into the runtime stage points
# at the base image's interpreter (/usr/local/bin/python3.11).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
# builder: compile anything without a wheel and install tokensvc into /opt/venv
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# The compiler and OpenSSL headers build tokensvc's compiled verify path (tokensvc/_speedups.c),
# and any dependency without a wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libffi-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the wheel is built from (README* is optional; pyproject.toml names it), and the lock.
# tokensvc/openapi.yaml is a symlink to ../openapi.yaml, so the top-level file must come too,
# or the wheel silently lacks the spec that GET /openapi.yaml serves.
COPY pyproject.toml openapi.yaml requirements-lock.txt README* ./
COPY tokensvc ./tokensvc
COPY caveats ./caveats
COPY keystore ./keystore

# A regular (non-editable) install: builds the wheel and puts it and its dependencies into
# the venv, with bytecode compiled now, since the runtime user cannot write the venv. The
# dependencies are the versions pinned in requirements-lock.txt, the ones CI tested.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c requirements-lock.txt /src \
    && tokensvc --help >/dev/null \
    && (cd / && python -c "import tokensvc._speedups") \
    && python -c "from importlib.resources import files; files('tokensvc').joinpath('openapi.yaml').read_text()"

# ---------------------------------------------------------------------------
# runtime: the venv and nothing else from the build
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="tokensvc" \
      org.opencontainers.image.description="Macaroon token and credential service" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fixed uid/gid so volume ownership and Kubernetes securityContext (runAsUser: 10001) line up.
RUN groupadd --system --gid 10001 tokensvc \
    && useradd --system --uid 10001 --gid tokensvc --create-home --home-dir /home/tokensvc \
        --shell /usr/sbin/nologin tokensvc \
    && install -d -o tokensvc -g tokensvc -m 0700 /var/lib/tokensvc

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENSVC_DATA_DIR=/var/lib/tokensvc \
    TOKENSVC_HOST=0.0.0.0

USER 10001:10001
WORKDIR /var/lib/tokensvc
EXPOSE 8080

# /healthz has no dependencies (liveness). No curl in slim images: Python's urllib does it;
# an HTTP error or a refused connection raises, so the exit status is 1 (unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('TOKENSVC_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["tokensvc"]
CMD ["serve"]
