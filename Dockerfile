# The collector service.
#   docker build -t collector .
#   docker run -v "$PWD/jobs.yaml:/config/jobs.yaml:ro" -v collector-data:/data collector
# A relative sqlite URL in the job file (sqlite:///collector.db) lands in the /data volume.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /data collector \
 && mkdir -p /data /config \
 && chown collector /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY collector ./collector
COPY migrations ./migrations
RUN pip install --no-cache-dir '.[postgres]'

USER collector
WORKDIR /data
VOLUME ["/data"]
# Runs wait here while the database can't be reached (the job file's folder is read-only).
ENV COLLECTOR_SPOOL=/data/collector.spool
# `docker stop` sends SIGTERM: calls in flight finish, every run is written, exit code 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["collector"]
CMD ["run", "/config/jobs.yaml"]
