"""Who is calling the admin API: the authenticated :class:`~ca.store.records.Actor` of a request.

The admin app's guard (:mod:`ca.admin_guard`) decides who the caller is before any route runs and
leaves it, and the roles it holds, in the request's state. A route that changes anything takes it as
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


def caller_roles(request: Request) -> frozenset[str]:
    """Every role the request's caller holds (not only the one the route was allowed under), for the
    rules that look further than the matrix: you cannot grant what you do not hold."""
    roles = getattr(request.state, "roles", None)
    if not isinstance(roles, frozenset):
        raise RuntimeError("the admin API served a request whose caller was not authenticated")
    return roles


# A route parameter ``actor: Caller`` receives the request's authenticated caller.
Caller = Annotated[Actor, Depends(caller)]
# A route parameter ``roles: CallerRoles`` receives every role that caller holds.
CallerRoles = Annotated[frozenset[str], Depends(caller_roles)]
