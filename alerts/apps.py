from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"

    def ready(self) -> None:  # queues with a firing alert need attention on the overview
        from monitoring.overview import register_attention

        from .selectors import firing_queues

        register_attention(firing_queues)
