# syntax=docker/dockerfile:1
# Gearman HQ images (used by docker-compose.yml). Two targets:
#   gearmand  stock gearmand 1.1.x from Debian bookworm (what HQ watches)
#   hq        the Django app: web (python -m hq.serve: granian for HTTP, gunicorn + uvicorn
#             for the live websocket on 8001), worker
#             (celery -B), tap (proxy or capture)
#             -- the default target
#
#   docker build --target gearmand -t gearman-hq-gearmand .
#   docker build -t gearman-hq .

# ---------------------------------------------------------------- gearmand
FROM debian:bookworm-slim AS gearmand
RUN apt-get update \
    && apt-get install -y --no-install-recommends gearman-job-server gearman-tools \
    && rm -rf /var/lib/apt/lists/*
USER gearman
EXPOSE 4730
HEALTHCHECK --interval=10s --timeout=5s --retries=5 \
    CMD gearadmin -h 127.0.0.1 -p 4730 --server-version || exit 1
ENTRYPOINT ["gearmand", "--listen=0.0.0.0", "--port=4730", "--log-file=stderr", \
            "--pid-file=/tmp/gearmand.pid"]
# Extra flags go here, e.g. command: ["--verbose=WARNING", "--job-retries=3"]
CMD ["--verbose=WARNING"]

# ---------------------------------------------------------------- hq
FROM python:3.11-slim-bookworm AS hq
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=hq.settings
# tcpdump: capture mode (the tap container then needs NET_RAW, see docker-compose.yml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tcpdump \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# Dependencies first, for the layer cache. With pyproject.toml alone the package search
# finds no app package, so this installs only the dependencies (and the hq-tap script);
# the code runs from /app (PYTHONPATH).
COPY pyproject.toml ./
RUN pip install .

COPY . .
RUN HQ_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && useradd --system --home-dir /app --shell /usr/sbin/nologin hq \
    && mkdir -p /app/var/spool /app/var/log \
    && chown -R hq: /app/var
USER hq
EXPOSE 8000 8001 4730
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
CMD ["python", "-m", "hq.serve", "--bind", "0.0.0.0:8000", "--ws-bind", "0.0.0.0:8001"]
