"""Who is calling the admin API: the authenticated :class:`~ca.store.records.Actor` of a request.

The admin app decides who the caller is before any route runs (:func:`ca.http_api.create_admin_app`)
and leaves it in the request's state. A route that changes anything takes it as
``actor: Actor = Depends(caller)`` and hands it to its domain call, which writes it into the audit log;
so no route can forget whom to audit, and none can make up a caller from the request body.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ca.store.records import Actor


def caller(request: Request) -> Actor:
    """The caller the admin app authenticated for ``request``."""
    actor = getattr(request.state, "actor", None)
    if not isinstance(actor, Actor):  # a route mounted on an app without authentication: a bug, never a guest
        raise RuntimeError("the admin API served a request whose caller was not authenticated")
    return actor


# A route parameter ``actor: Caller`` receives the request's authenticated caller.
Caller = Annotated[Actor, Depends(caller)]
