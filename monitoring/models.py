"""The gearmand servers HQ watches and each of their boots (process lifetimes)."""

from django.db import models


class Server(models.Model):
    """One gearmand, named by the operator (``--server NAME`` on the tap)."""

    name = models.CharField(max_length=100, unique=True)
    address = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Boot(models.Model):
    """One run of a gearmand process. Handles restart at 1 with each boot, so a job is
    identified by (boot, handle). ``token`` is gearmand's pid, with ``.N`` appended when the
    handle counter went back without the pid changing."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="boots")
    token = models.CharField(max_length=64)
    first_seen = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["server", "token"], name="boot_server_token")
        ]

    def __str__(self) -> str:
        return f"{self.server.name} boot {self.token}"
