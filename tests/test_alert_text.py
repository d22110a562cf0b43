"""Alert text goes to apprise as plain text: a function name with markup reaches an HTML
channel escaped, never as markup (the receiver is the outside world's edge)."""

from __future__ import annotations

from alerts.delivery import send
from tests.receiver import Receiver

NASTY = '<img src=x onerror="alert(1)"> & <b>resize</b>'


def test_markup_in_titles_and_bodies_is_escaped_for_html_channels(receiver: Receiver) -> None:
    result = send(receiver.url + "?format=html", f"Queue {NASTY} backed up",
                  f"function {NASTY}\n120 queued")
    assert result.ok, result.error
    message = receiver.messages[-1]
    body = message["message"]
    assert "<img" not in body and "<b>" not in body
    assert "&lt;img" in body and "&lt;b&gt;resize&lt;/b&gt;" in body
    # a service's own title field is plain text (a mail subject): apprise leaves it be,
    # and converts it only where the title is blended into the body
    assert message["title"] == f"Queue {NASTY} backed up"


def test_plain_text_channels_get_the_text_unchanged(receiver: Receiver) -> None:
    assert send(receiver.url, "Queue a<b> backed up", f"function {NASTY}").ok
    assert NASTY in receiver.messages[-1]["message"]
