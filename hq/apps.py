from django.apps import AppConfig


class HqConfig(AppConfig):
    name = "hq"
    verbose_name = "Gearman HQ"

    def ready(self) -> None:
        from . import schema  # noqa: F401  registers the OpenAPI description of our tokens
        from .auth import connect_forgetting

        connect_forgetting()
