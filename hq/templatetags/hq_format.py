"""The ``hq_format`` template library: ``hq/formatting.py``'s functions as filters and tags."""

from django import template

from hq import formatting

register = template.Library()

FILTERS = (
    "duration_ms",
    "ago",
    "utc",
    "iso",
    "offset",
    "is_bytes",
    "hexdump",
    "preview",
    "byte_len",
    "size",
    "percent",
    "event_icon",
    "event_tone",
    "event_label",
    "state_icon",
    "pretty_json",
    "blob_kind",
    "share",
    "spans_servers",
)
TAGS = ("user_role",)

for _name in FILTERS:
    register.filter(_name, getattr(formatting, _name))
for _name in TAGS:
    register.simple_tag(getattr(formatting, _name), name=_name)
