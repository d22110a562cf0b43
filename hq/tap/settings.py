"""Settings for a tap process: HQ's settings with only the apps a tap uses.

A tap reads and writes the models of ``jobs``, ``monitoring`` and ``alerts`` and runs the
``hq`` app's commands; it serves no page, API or websocket. Leaving the web's apps out
(Daphne and Twisted, Channels, the REST framework's browsable views, sessions, messages,
static files) keeps ~24 MB of modules out of a tap's memory (issue 13: ``bench/tap_memory.py``).
``hq-tap`` uses it; ``manage.py gearman_capture`` uses it when
``DJANGO_SETTINGS_MODULE=hq.tap.settings``.
"""

from hq.settings import *  # noqa: F403
from hq.settings import INSTALLED_APPS as _WEB_APPS

#: the web's apps a tap does without
WEB_ONLY = frozenset({
    "daphne", "django.contrib.sessions", "django.contrib.messages",
    "django.contrib.staticfiles", "django.contrib.humanize", "rest_framework",
    "drf_spectacular", "drf_spectacular_sidecar", "django_htmx", "channels",
})
INSTALLED_APPS = [app for app in _WEB_APPS if app not in WEB_ONLY]
