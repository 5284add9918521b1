# Parley in a container. The embedded Valkey keeps its data in /data; set REDIS_URL to use your own.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PARLEY_HOST=0.0.0.0 \
    PARLEY_PORT=8080 \
    PARLEY_DATA_DIR=/data \
    PARLEY_AGENTS_DIR=/app/agents

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 parley && mkdir /data && chown parley /data
COPY agents ./agents

USER parley
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PARLEY_PORT\"]}/healthz', timeout=2)"
# SIGTERM drains turns in flight (PARLEY_DRAIN_TIMEOUT_S) before exiting. `parley serve` runs a worker process per
# CPU the container may use (its cpuset) and a web process (PARLEY_PROCESSES or --processes to choose): as PID 1 it
# is the supervisor, which passes SIGTERM to its children and exits once they drained. Give `docker stop` a --time above
# PARLEY_DRAIN_TIMEOUT_S (its default 10 s is shorter than the default 25 s drain).
STOPSIGNAL SIGTERM
CMD ["parley", "serve"]
