# The collector service.
#   docker build -t collector .
#   docker run -v "$PWD/jobs.yaml:/config/jobs.yaml:ro" -v collector-data:/data collector
# Relative data paths in the job file (sqlite:///collector.db, spool.path) land in the /data
# volume ($COLLECTOR_DATA_DIR), not beside the read-only job file in /config.
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
ENV COLLECTOR_DATA_DIR=/data
# Per-key state (nonce marks) outlives the container in the volume.
ENV COLLECTOR_STATE_DIR=/data/state
# Runs wait here while the database can't be reached. Kept although COLLECTOR_DATA_DIR would put
# the spool in /data too: for SQLite that would be collector.db.spool, and a container upgraded
# while runs wait must find them where the previous image left them.
ENV COLLECTOR_SPOOL=/data/collector.spool
# `docker stop` sends SIGTERM: calls in flight finish, every run is written, exit code 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["collector"]
CMD ["run", "/config/jobs.yaml"]
