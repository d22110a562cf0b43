from django.apps import AppConfig


class HqConfig(AppConfig):
    name = "hq"
    verbose_name = "Gearman HQ"
