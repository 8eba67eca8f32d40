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
COPY tools/lock_check.py /usr/local/bin/tokensvc-lock-check
COPY tokensvc ./tokensvc
COPY caveats ./caveats
COPY keystore ./keystore

# A regular (non-editable) install: builds the wheel and puts it and its dependencies into
# the venv, with bytecode compiled now, since the runtime user cannot write the venv. The
# dependencies are the versions pinned in requirements-lock.txt, the ones CI tested; through
# PIP_CONSTRAINT the lock also pins the build backend (setuptools) that pip installs in its
# isolated build environment, which `-c` alone does not reach. The check after the install
# fails the build if anything in the venv is not at its locked version (a dependency missing
# from the lock would otherwise come in at whatever version is newest that day).
# (PIP_BUILD_CONSTRAINT: pip 25.3 and later read build constraints from there instead.)
ENV PIP_CONSTRAINT=/src/requirements-lock.txt \
    PIP_BUILD_CONSTRAINT=/src/requirements-lock.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install /src \
    && pip freeze --exclude tokensvc --exclude pip | python /usr/local/bin/tokensvc-lock-check requirements-lock.txt \
    && tokensvc --help >/dev/null \
    && (cd / && python -c "import tokensvc._speedups") \
    && python -c "from importlib.resources import files; files('tokensvc').joinpath('openapi.yaml').read_text()"

# ---------------------------------------------------------------------------
# runtime: the venv and nothing else from the build
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# tini as PID 1: it forwards SIGTERM to `tokensvc serve` (which stops its workers and lane
# gracefully) and reaps any orphaned process, which a Python PID 1 does not do.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

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
# TOKENSVC_HOST=0.0.0.0 without TLS is refused at start unless the container gets native TLS
# (TOKENSVC_TLS_CERT_FILE/_KEY_FILE), the proxy that terminates TLS in front of it
# (TOKENSVC_TRUSTED_PROXIES), or TOKENSVC_ALLOW_INSECURE=plain-http.
# 8080: the service; 8081: the verify listener (TOKENSVC_VERIFY_PORT, POST /v1/verify only).
EXPOSE 8080 8081

# /healthz has no dependencies (liveness). `tokensvc healthcheck` reads TOKENSVC_HOST, _PORT and
# _TLS_CERT_FILE as `serve` does, so it speaks https (trusting exactly the served certificate)
# under native TLS and http otherwise; any failure exits 1 (unhealthy) with one line saying why.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["tokensvc", "healthcheck"]

ENTRYPOINT ["/usr/bin/tini", "--", "tokensvc"]
CMD ["serve"]
