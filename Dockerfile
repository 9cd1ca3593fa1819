# The collector service.
#   docker build -t collector .
#   docker run -v "$PWD/jobs.yaml:/config/jobs.yaml:ro" -v collector-data:/data collector
# Relative data paths in the job file (sqlite:///collector.db, spool.path) land in the /data
# volume ($COLLECTOR_DATA_DIR), not beside the read-only job file in /config.
# A key file (key_file: kraken.key, beside the job file) is mounted too, and must be readable by
# the image's user, uid 10001: a mount keeps the host's owner and mode, so on the host
#   sudo chown 10001 kraken.key   (still chmod 600)
#   docker run -v "$PWD/jobs.yaml:/config/jobs.yaml:ro" -v "$PWD/kraken.key:/config/kraken.key:ro" ...
# or give the key as ${KRAKEN_API_KEY}/${KRAKEN_API_SECRET} (docker run --env-file), or as a compose
# secret (examples/compose.yaml). A key file it cannot read is one line at start saying so.
# An exact tag (its Python is the one requirements.lock was made with); pin its digest too where
# the registry can be asked: docker buildx imagetools inspect python:3.11.7-slim-bookworm.
FROM python:3.11.7-slim-bookworm

RUN useradd --system --uid 10001 --home-dir /data collector \
 && mkdir -p /data /config \
 && chown collector /data

WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY collector ./collector
COPY migrations ./migrations
# The locked versions (runtime and the postgres extra), then the package alone: nothing resolved
# at build time. pip check: the lock still satisfies pyproject's dependencies.
RUN pip install --no-cache-dir -r requirements.lock \
 && pip install --no-cache-dir --no-deps . \
 && pip check

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
# glibc gives each thread an arena of its own, kept once grown: a soak of 1,000 jobs grew about
# 5 MB that way before levelling; with two arenas it was level from 30k runs (docs/benchmarks.md).
ENV MALLOC_ARENA_MAX=2
# `docker stop` sends SIGTERM: calls in flight finish, every run is written, exit code 0;
# `docker kill --signal HUP` reloads the job file.
STOPSIGNAL SIGTERM
# /metrics and /healthz: on in the image (the flag overrides the job file's metrics.listen), so the
# HEALTHCHECK below always has something to ask. A CMD of your own must keep the flag.
EXPOSE 9108
# 503 (a stale job, the database away while runs spool, a lockout) or no answer: urlopen raises,
# python exits 1. The image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["collector"]
CMD ["run", "--metrics-listen", "0.0.0.0:9108", "/config/jobs.yaml"]
