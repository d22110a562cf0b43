"""Gearman HQ settings. Every knob comes from the environment; see the README's table."""

from pathlib import Path

from broker.client import parse_servers

from .env import database_from_url, env_bool, env_int, env_list, env_str, web_pool
from .security import DEV_SECRET_KEY

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("HQ_DEBUG", False)
# The fallback lets imports work without any environment (mypy's plugin, manage.py, tests);
# the web server and Celery refuse to start with it unless HQ_DEBUG (hq/security.py).
SECRET_KEY = env_str("HQ_SECRET_KEY", "") or DEV_SECRET_KEY
ALLOWED_HOSTS = env_list("HQ_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("HQ_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "channels",
    "hq",
    "jobs",
    "monitoring",
    "alerts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "hq.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "hq.middleware.QueryGuardMiddleware",
    "hq.middleware.ServiceErrorsMiddleware",
]

ROOT_URLCONF = "hq.urls"
ASGI_APPLICATION = "hq.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "alerts.context_processors.alerts_header",
                "hq.context_processors.live_url",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gearman_hq")
    )
}
if env_str("HQ_TEST_DATABASE", ""):  # lets two test runs share one Postgres
    DATABASES["default"]["TEST"] = {"NAME": env_str("HQ_TEST_DATABASE", "")}
# The web tier's Postgres budget (README "Serving many clients"): HQ_WEB_WORKERS server
# processes, each running requests on HQ_WEB_THREADS threads with a psycopg pool of at most
# HQ_DB_POOL_MAX connections; workers × pool never more than HQ_WEB_DB_CONNECTIONS
# (hq/serve.py refuses to start otherwise), so the web tier can never take the connections
# the taps and Celery need. A request that waits longer than HQ_DB_POOL_TIMEOUT_S for a
# connection, or meets any other database error, gets a 503 with Retry-After:
# HQ_DB_RETRY_AFTER_S (hq/errors.py, hq/middleware.py). Only the web server pools (hq/serve.py sets
# HQ_PROCESS=web); Celery, the taps, manage.py and the tests keep plain connections.
# Few threads per process, more processes: a request's thread waits for the GIL after each
# database round trip while the process's other threads run; with 6 threads that wait was
# the find-by-handle p95 (bench/api_load.py: 2 × 6 threads p95 31-39 ms, 3 × 2 17-19 ms).
HQ_WEB_WORKERS = env_int("HQ_WEB_WORKERS", 3)
HQ_DB_POOL_MAX = env_int("HQ_DB_POOL_MAX", 2)
HQ_DB_POOL_MIN = env_int("HQ_DB_POOL_MIN", 1)
HQ_DB_POOL_TIMEOUT_S = env_int("HQ_DB_POOL_TIMEOUT_S", 10)
HQ_WEB_DB_CONNECTIONS = env_int("HQ_WEB_DB_CONNECTIONS", 16)
HQ_WEB_THREADS = env_int("HQ_WEB_THREADS", HQ_DB_POOL_MAX)
HQ_DB_RETRY_AFTER_S = env_int("HQ_DB_RETRY_AFTER_S", 5)
# Where pages open the live websocket (static/js/live.js): "" the page's own origin;
# ":8001" the page's host on that port (python -m hq.serve sets it to its HQ_WS port);
# "/ws/live/" behind a proxy that routes it; or a full ws:// or wss:// URL.
HQ_LIVE_URL = env_str("HQ_LIVE_URL", "")
# Per-token rate limit of the REST API (hq/throttles.py): HQ_API_RATE requests per
# HQ_API_RATE_WINDOW_S seconds per token (or signed-in user); 0 = no limit.
HQ_API_RATE = env_int("HQ_API_RATE", 6000)
HQ_API_RATE_WINDOW_S = env_int("HQ_API_RATE_WINDOW_S", 60)
HQ_API_RATE_ADMINS_EXEMPT = env_bool("HQ_API_RATE_ADMINS_EXEMPT", True)
# Values many clients ask for at once (the queue list, the workers list, the taps' health)
# are computed once per HQ_SHARED_CACHE_S seconds and shared through the Redis cache by
# every web process (hq/shared_cache.py). Never longer than the poll interval; 0 = off. On
# by default only in the web server: tests and manage.py see every change at once.
HQ_SHARED_CACHE_S = min(env_int("HQ_SHARED_CACHE_S", 2 if env_str("HQ_PROCESS", "") == "web"
                                else 0), env_int("HQ_POLL_INTERVAL", 5))
if env_str("HQ_PROCESS", "") == "web":
    DATABASES["default"].update(web_pool(
        min_size=HQ_DB_POOL_MIN, max_size=HQ_DB_POOL_MAX, timeout_s=HQ_DB_POOL_TIMEOUT_S))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py's 5 s default read timeout is shorter than channels_redis's blocking
        # read, which dropped every idle websocket (django/channels_redis#422)
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30,
                              "socket_connect_timeout": 5}]},
    }
}
HQ_LIVE_INTERVAL_MS = env_int("HQ_LIVE_INTERVAL_MS", 500)
# Django's cache (login attempt counters) lives in Redis, shared by every web process.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        # two test runs (or two HQs) sharing one Redis do not see each other's counters
        "KEY_PREFIX": "hq:" + (env_str("HQ_TEST_DATABASE", "")
                               or str(DATABASES["default"]["NAME"])),
    }
}
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# HQ_SECURE=1 behind HTTPS (a TLS-terminating proxy that sets X-Forwarded-Proto): cookies
# only over HTTPS, HSTS, and request.is_secure() from the proxy's header.
HQ_SECURE = env_bool("HQ_SECURE", False)
if HQ_SECURE:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("HQ_HSTS_SECONDS", 31536000)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "hq.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["hq.permissions.ViewerReadOperatorWrite"],
    "DEFAULT_RENDERER_CLASSES": ["hq.renderers.FastJSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "hq.negotiation.PlainJSONFirst",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["hq.throttles.TokenRateThrottle"],
    "EXCEPTION_HANDLER": "hq.api_errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": None,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Gearman HQ API",
    "DESCRIPTION": "Job history, queues and actions for Gearman job servers.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # the schema and the docs page need a signed-in viewer, like every other page
    "SERVE_PERMISSIONS": ["hq.permissions.ViewerReadOperatorWrite"],
    # Swagger UI from the drf-spectacular-sidecar package (no CDN: works offline, fits CSP)
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# -- Gearman HQ's own knobs (documented in README.md) ---------------------------------------
HQ_PAYLOAD_MAX = env_int("HQ_PAYLOAD_MAX", 65536)
HQ_GEARMAN = env_str("HQ_GEARMAN", "127.0.0.1:4730")
HQ_SERVER_NAME = env_str("HQ_SERVER_NAME", "local")
# HQ_GEARMAN as a list: "gm1=10.0.0.5:4730,gm2=10.0.0.6:4730" (names as the taps record
# them) or a bare "host:port" (named HQ_SERVER_NAME). HQ's own submits go to the first that
# acknowledges, starting from a different one each time (jobs/services.py).
try:
    HQ_GEARMAN_SERVERS = parse_servers(HQ_GEARMAN, HQ_SERVER_NAME)
except ValueError as _exc:
    raise SystemExit(str(_exc)) from None
HQ_SPOOL_DIR = Path(env_str("HQ_SPOOL_DIR", str(BASE_DIR / "var" / "spool")))
HQ_INGEST_BATCH = env_int("HQ_INGEST_BATCH", 5000)
HQ_INGEST_FLUSH_MS = env_int("HQ_INGEST_FLUSH_MS", 200)
# The ingest writer's bounds (README "Reliability"): disk spool and quarantine sizes in
# bytes, its connection's connect and statement timeouts, the lag that makes a tap unhealthy.
HQ_SPOOL_MAX = env_int("HQ_SPOOL_MAX", 1 << 30)
HQ_QUARANTINE_MAX = env_int("HQ_QUARANTINE_MAX", 256 << 20)
HQ_INGEST_CONNECT_TIMEOUT_S = env_int("HQ_INGEST_CONNECT_TIMEOUT_S", 5)
HQ_INGEST_STATEMENT_TIMEOUT_MS = env_int("HQ_INGEST_STATEMENT_TIMEOUT_MS", 30000)
HQ_TAP_LAG_MAX_S = env_int("HQ_TAP_LAG_MAX_S", 30)
HQ_EVENT_RETENTION_DAYS = env_int("HQ_EVENT_RETENTION_DAYS", 30)
HQ_POLL_INTERVAL = env_int("HQ_POLL_INTERVAL", 5)
# seconds between two checks of HQ's open jobs against gearmand's `show jobs`
HQ_RECONCILE_INTERVAL = env_int("HQ_RECONCILE_INTERVAL", 10)
HQ_ALERT_INTERVAL = env_int("HQ_ALERT_INTERVAL", 10)
HQ_ALERT_REPEAT_S = env_int("HQ_ALERT_REPEAT_S", 3600)
HQ_PUBLIC_URL = env_str("HQ_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Security and privacy (README "Security"): failed sign-ins allowed per IP and user name
# in HQ_LOGIN_WINDOW_S; functions whose payloads and results are never stored (globs);
# whether viewers see payloads at all.
HQ_LOGIN_ATTEMPTS = env_int("HQ_LOGIN_ATTEMPTS", 10)
HQ_LOGIN_WINDOW_S = env_int("HQ_LOGIN_WINDOW_S", 300)
HQ_REDACT = env_list("HQ_REDACT", "")
HQ_VIEWERS_SEE_PAYLOADS = env_bool("HQ_VIEWERS_SEE_PAYLOADS", True)

CELERY_BEAT_SCHEDULE = {
    "refresh-rollups": {"task": "monitoring.tasks.refresh_recent_rollups", "schedule": 20.0},
    "evaluate-alerts": {"task": "alerts.tasks.evaluate_alerts",
                        "schedule": float(HQ_ALERT_INTERVAL)},
    "deliver-notifications": {"task": "alerts.tasks.deliver_notifications", "schedule": 5.0},
    "prune-snapshots": {"task": "monitoring.tasks.prune_old_snapshots", "schedule": 3600.0},
    "apply-retention": {"task": "jobs.tasks.apply_retention", "schedule": 3600.0},
    # HQ-scheduled jobs whose time came (claimed with SKIP LOCKED), and HQ's submits
    # linked to the rows their taps wrote (jobs/scheduler.py)
    "submit-due-jobs": {"task": "jobs.tasks.submit_due_jobs", "schedule": 1.0},
    # retry policies, dead letters, job of death (jobs/recovery/engine.py)
    "recover-failed-jobs": {"task": "jobs.tasks.recover_failed_jobs", "schedule": 1.0},
}
# a job whose runs killed this many workers (worker_lost) is a job of death: never retried
HQ_JOB_OF_DEATH = env_int("HQ_JOB_OF_DEATH", 3)
# policy retries submitted per second at most; the excess waits for the next free second
HQ_RETRY_MAX_PER_S = env_int("HQ_RETRY_MAX_PER_S", 100)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("HQ_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
