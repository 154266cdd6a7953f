# drainpool in a container: the daemon is PID 1 and drains on SIGTERM itself.
#
#   docker build -t drainpool .
#   docker run --rm -p 127.0.0.1:9468:9468 -v drainpool-queue:/var/lib/drainpool drainpool
#
# `docker stop` sends SIGTERM and waits 10 s by default, which is exactly the
# default grace: give it room with `docker stop -t 30` (compose.yaml sets
# stop_grace_period).

# Build stage: only the wheel of this project; its dependencies are resolved
# by pip in the runtime stage from their published wheels. The requirements
# file names the wheel with the redis and postgres extras, so one image serves
# every queue backend and pip still installs from a file, not an unpinned name.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY daemon ./daemon
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && for wheel in /wheels/drainpool-*.whl; do \
        printf '%s[redis,postgres]\n' "${wheel}" > /wheels/requirements.txt; \
    done

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --requirement /wheels/requirements.txt \
    && rm -rf /wheels

# A fixed numeric uid/gid, so volume ownership and Kubernetes runAsUser agree.
RUN groupadd --system --gid 10001 drainpool \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/drainpool \
        --shell /usr/sbin/nologin drainpool \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/drainpool

COPY config/drainpool.toml /etc/drainpool/drainpool.toml

# Inside the container only: the metrics port must be reachable through the
# published port, so it binds to all of the container's addresses. The queue
# lives on the volume whatever the config file says.
ENV DRAINPOOL_CONFIG=/etc/drainpool/drainpool.toml \
    DRAINPOOL_METRICS__HOST=0.0.0.0 \
    DRAINPOOL_QUEUE__URL=sqlite:////var/lib/drainpool/queue.db

VOLUME ["/var/lib/drainpool"]
WORKDIR /var/lib/drainpool
USER 10001:10001
EXPOSE 9468

# /healthz answers 200 while the supervisor loop is alive. No curl in the slim
# image, so the check is the interpreter that is already there.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DRAINPOOL_METRICS__PORT', '9468') + '/healthz', timeout=4)"]

# Exec form: drainpool itself is PID 1 and receives SIGTERM and SIGHUP, with no
# shell in between to swallow them.
STOPSIGNAL SIGTERM
ENTRYPOINT ["drainpool", "run"]
CMD ["--config", "/etc/drainpool/drainpool.toml"]
