from django.apps import AppConfig


class HqConfig(AppConfig):
    name = "hq"
    verbose_name = "Gearman HQ"

    def ready(self) -> None:
        from django.apps import apps

        if apps.is_installed("drf_spectacular"):  # not in a tap (hq.tap.settings)
            from . import schema  # noqa: F401  registers the OpenAPI description of tokens
        if apps.is_installed("rest_framework"):  # tokens are the API's (not in a tap)
            from .auth import connect_forgetting

            connect_forgetting()
