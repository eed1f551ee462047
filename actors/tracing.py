"""The request id a log line or a shard operation belongs to.

In an ingress replica it is Serve's: the `X-Request-Id` the client (or HAProxy, when the
client sent none) gave, which the answer carries back. The ingress hands it to the shards
with each operation (actors/protocol.py, the wire form's third element); an account shard
names the request ids of each group commit in the commit's log line, and a reward shard
runs each operation (and the saga steps it starts, which inherit the context) with
`REQUEST_ID` set, so their lines and their own calls to account shards carry it too.
"""

from __future__ import annotations

import contextvars

# Set where no Serve request context exists (inside shards): the operation being run.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("points_request_id", default="")


def request_id() -> str:
    """The id of the request being handled in this task, or "" when there is none."""
    found = REQUEST_ID.get()
    if found:
        return found
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or ""
    except Exception:  # not in a replica, or Serve's context moved: no id
        return ""
