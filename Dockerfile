# The gateway as a container (docs/operations.md, "Docker"):
#   docker build -t gateway .
#   docker run -p 8080:8080 -v gateway-data:/data gateway serve --bootstrap-key demo
# BASE is any image with Python 3.11+ as `python` (with venv) and useradd (the tests build on
# a stand-in made from Debian packages, since Docker Hub is not reachable from CI).
ARG BASE=python:3.11-slim

# -- build: the package and its dependencies in a virtual environment ------------------------
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
# The dependencies first, in a layer of their own that only a change to pyproject.toml rebuilds
# (installed with an empty package and README, then the package is removed again).
RUN mkdir gateway && touch gateway/__init__.py README.md \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall -y gateway \
    && rm -rf gateway build ./*.egg-info README.md
COPY README.md ./
COPY gateway ./gateway
# Bytecode is compiled here: the running container's root is read-only, so Python could not
# cache it later and would recompile every module on each start. pip and setuptools are only
# needed to install, so they stay out of the final image.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && /opt/venv/bin/pip uninstall -y pip setuptools

# -- run: the base image, the environment, a non-root user ------------------------------------
FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_DATA_DIR=/data \
    GATEWAY_MAPPINGS=/etc/gateway/mappings
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /data \
    && chown gateway:gateway /data
COPY --from=build /opt/venv /opt/venv
COPY mappings /etc/gateway/mappings

USER gateway
# The volume is the working directory too: a mapping's relative file path (the demo's
# ./var/demo-deliveries.ndjson) lands in /data, the one writable place under --read-only.
# PYTHONSAFEPATH keeps files there from shadowing modules of `python -m gateway` (workers).
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

# /healthz answers while the process serves; its request lines are logged at debug level only.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["gateway"]
CMD ["serve"]
