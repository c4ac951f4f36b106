# marker-ingest: `docker build -t marker-ingest .`, then see docker-compose.yml.
# The build stage installs the project into a virtual environment; the image only copies it, runs as
# a non-root user and needs no network at run time.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the core's speedups (service/core/_speedups.c); the runtime image does not need it.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/marker-ingest
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY schemas ./schemas
COPY service ./service
RUN /opt/marker-ingest/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/marker-ingest/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# The probes and the scraper come from outside the container; the service's own default is loopback.
ENV INGEST_HTTP_HOST=0.0.0.0
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ingest
COPY --from=build /opt/marker-ingest /opt/marker-ingest
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["marker-ingest"]
CMD ["run"]
