# The Stepstream image: the engine's four services (`stepstream api|projector|scheduler|executor`),
# the topic-creation step (`stepstream topics create`) and the example workflow app, all from one
# installed package.
#
#   docker build -t stepstream:local .
#   docker run --rm stepstream:local --help
#
# `make check-deploy` checks this file without a Docker engine (deploy/check says what it checks).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: a virtual environment with the package and its `server` and `examples` extras ------
FROM ${PYTHON_IMAGE} AS builder

# pip compiles the installed modules to bytecode here, once: the runtime user cannot write it.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies before source: this layer is rebuilt only when pyproject.toml changes. The list is
# read from pyproject.toml itself, so there is no second list of pins to keep in step.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join([*p['dependencies'], *extras['server'], *extras['examples']]))" > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt

# The package itself, built into a wheel and installed without touching the dependencies above.
# services/stepstream/schemas is a symlink to the top-level schemas/: copy both, or the wheel ships
# without its Avro schemas.
COPY README.md ./
COPY schemas/ ./schemas/
COPY services/ ./services/
RUN pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && pip install --no-deps /tmp/wheels/stepstream-*.whl \
 && pip check \
 && stepstream --help > /dev/null

# -- runtime: the slim base, the virtual environment, the example app, a non-root user ----------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 stepstream \
 && useradd --system --uid 10001 --gid stepstream --home-dir /var/lib/stepstream --no-create-home \
      --shell /usr/sbin/nologin stepstream \
 && mkdir -p /var/lib/stepstream \
 && chown stepstream:stepstream /var/lib/stepstream

COPY --from=builder /opt/venv /opt/venv
COPY deploy/healthcheck.py /usr/local/bin/stepstream-healthcheck
COPY examples/ /app/examples/

# STEPSTREAM_HOME holds the api's query store (STEPSTREAM_DATABASE defaults to
# $STEPSTREAM_HOME/stepstream.db): mount a volume there. The api must listen on all interfaces in a
# container; the other services' health servers already do (STEPSTREAM_HEALTH_HOST=0.0.0.0).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STEPSTREAM_HOME=/var/lib/stepstream \
    STEPSTREAM_API_HOST=0.0.0.0

WORKDIR /app
USER 10001:10001

# 8080: the api (STEPSTREAM_API_PORT); 8081: the health server of projector, scheduler and
# executor (STEPSTREAM_HEALTH_PORT).
EXPOSE 8080 8081

# The services stop gracefully on SIGTERM (finish or hand back in-flight work, commit, leave the
# group); give them time: `docker stop -t 30`, terminationGracePeriodSeconds >= 30.
STOPSIGNAL SIGTERM

# Liveness of whichever service this container runs: the script finds the command and its port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/stepstream-healthcheck"]

ENTRYPOINT ["stepstream"]
CMD ["api"]
