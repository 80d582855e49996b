"""The admin API's gate (ca/admin_guard.py) over the route-by-role matrix (ca/rbac.py): every route is
classified, the docs show the matrix as it is, and refusals are 401/403 with one reason, identical
whether or not the object exists, and audited."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from starlette.routing import Mount

from ca.admin_auth import Presented, Principal
from ca.http_api import create_admin_app
from ca.rbac import BREAK_GLASS_ROLE, ROUTE_POLICIES, Role, matrix_markdown, policy_for
from ca.store.records import Actor, Agent
from spiffe_core.errors import NotAuthenticated
from spiffe_core.spiffe_id import SpiffeId
from tests.support.admin import RecordedAudit
from tests.support.clock import FakeClock

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
DOCS = Path(__file__).parents[3] / "docs" / "admin-api.md"


class Unreachable:
    """Stands for every domain object: a refused request must never reach one."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(*_args: object, **_kwargs: object) -> Any:
            self.calls.append(name)
            raise AssertionError(f"the route ran ({name}) although the request should have been refused")

        return call


class Callers:
    """Bearer token -> principal; anything else is refused as unauthenticated."""

    PRINCIPALS = {
        "officer": Principal("oidc:idp#olivia", "oidc", frozenset({Role.SECURITY_OFFICER})),
        "operator": Principal("oidc:idp#otto", "oidc", frozenset({Role.OPERATOR})),
        "auditor": Principal("oidc:idp#ada", "oidc", frozenset({Role.AUDITOR})),
        "nobody": Principal("spiffe://example.org/web", "mtls", frozenset()),
        "root": Principal("unix:uid=0", "unix-socket", frozenset(Role), break_glass=True),
    }

    def authenticate(self, presented: Presented) -> Principal:
        principal = self.PRINCIPALS.get(presented.bearer_token or "")
        if principal is None:
            raise NotAuthenticated("bearer token expired at 2030-01-02T03:00:00+00:00")
        return principal


def build_app(audit: RecordedAudit, domain: Unreachable, agents: Unreachable | None = None) -> FastAPI:
    return create_admin_app(
        domain,
        CollectorRegistry(),
        entries=domain,
        join_tokens=domain,
        authorities=domain,
        agents=agents or domain,
        federation=domain,
        mappings=domain,
        inventory=domain,
        authenticator=Callers(),
        audit=audit,
        clock=FakeClock(NOW),
        audit_log=domain,
    )


@pytest.fixture
def audit() -> RecordedAudit:
    return RecordedAudit()


@pytest.fixture
def domain() -> Unreachable:
    return Unreachable()


@pytest.fixture
def client(audit: RecordedAudit, domain: Unreachable) -> Iterator[TestClient]:
    with TestClient(build_app(audit, domain), raise_server_exceptions=False) as test_client:
        yield test_client


def as_(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}"}


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    served = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute):
            served |= {(method, route.path) for method in route.methods if method != "HEAD"}
        elif isinstance(route, Mount):
            served.add(("GET", route.path))
        else:
            served |= {(method, route.path) for method in getattr(route, "methods", ()) if method != "HEAD"}
    return served


# --- the matrix --------------------------------------------------------------------------------------


def test_every_route_the_admin_app_serves_is_classified(audit: RecordedAudit, domain: Unreachable) -> None:
    unclassified = {route for route in served_routes(build_app(audit, domain)) if policy_for(*route) is None}

    assert unclassified == set()


def test_every_classified_route_is_served(audit: RecordedAudit, domain: Unreachable) -> None:
    assert set(ROUTE_POLICIES) - served_routes(build_app(audit, domain)) == set()


def test_the_admin_api_guide_shows_the_matrix_as_the_code_holds_it() -> None:
    assert matrix_markdown() in DOCS.read_text()


def test_minting_svids_and_the_authorities_are_security_officer_powers_only() -> None:
    for method, path in [("POST", "/v1/x509-svids"), ("POST", "/v1/jwt-svids"), ("POST", "/v1/authorities/prepare")]:
        policy = policy_for(method, path)
        assert policy is not None
        assert policy.roles == {Role.SECURITY_OFFICER}


# --- refusals ----------------------------------------------------------------------------------------


def test_a_request_without_credentials_is_refused_401_with_a_bearer_challenge(client: TestClient) -> None:
    response = client.get("/v1/entries")

    assert response.status_code == 401
    assert response.json() == {"error": "bearer token expired at 2030-01-02T03:00:00+00:00"}
    assert response.headers["www-authenticate"] == 'Bearer realm="trustmesh"'


def test_an_invalid_token_is_refused_with_invalid_token(client: TestClient) -> None:
    response = client.get("/v1/entries", headers=as_("forged"))

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="trustmesh", error="invalid_token"'
    assert "forged" not in response.text


def test_an_authorization_header_that_is_not_a_bearer_token_is_refused(client: TestClient) -> None:
    response = client.get("/v1/entries", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})

    assert response.status_code == 401
    assert response.json() == {"error": "the Authorization header must be exactly one 'Bearer <token>'"}


def test_a_caller_without_the_role_is_refused_403_naming_what_is_needed(client: TestClient) -> None:
    response = client.post("/v1/authorities/prepare", json={"kind": "x509"}, headers=as_("operator"))

    assert response.status_code == 403
    assert response.json() == {
        "error": "oidc:idp#otto may not authority.prepare: POST /v1/authorities/prepare needs security-officer; "
        "it holds operator"
    }


def test_a_valid_svid_of_no_admin_is_refused_403(client: TestClient) -> None:
    response = client.get("/v1/bundle", headers=as_("nobody"))

    assert response.status_code == 403
    assert response.json()["error"].endswith("it holds no role")


def test_a_refusal_reads_the_same_whether_or_not_the_object_exists(client: TestClient, domain: Unreachable) -> None:
    first = client.delete("/v1/entries/an-entry-that-exists", headers=as_("auditor"))
    second = client.delete("/v1/entries/no-such-entry", headers=as_("auditor"))

    assert (first.status_code, second.status_code) == (403, 403)
    assert first.json() == second.json()
    assert domain.calls == []


def test_each_refusal_is_audited_with_the_matrix_action_and_the_route(client: TestClient, audit: RecordedAudit) -> None:
    client.post("/v1/authorities/abc/taint", json={}, headers=as_("auditor"))

    (event,) = audit.events
    assert (event.actor, event.action, event.target, event.outcome) == (
        Actor("oidc:idp#ada", "oidc"),
        "authority.taint",
        "POST /v1/authorities/{authority_id}/taint",
        "denied",
    )
    assert event.detail == {"source": "testclient", "status": 403, "path.authority_id": "abc"}
    assert event.reason.startswith("oidc:idp#ada may not authority.taint")


def test_an_unauthenticated_refusal_is_audited_under_its_source(client: TestClient, audit: RecordedAudit) -> None:
    client.get("/v1/agents")

    assert [(e.actor.name, e.action, e.outcome) for e in audit.events] == [
        ("unauthenticated:testclient", "agent.list", "denied")
    ]


def test_public_routes_need_no_credentials_and_are_not_audited(client: TestClient, audit: RecordedAudit) -> None:
    assert client.get("/live").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert audit.events == []


def test_a_route_nobody_classified_is_refused_to_remote_callers_but_not_to_root(
    audit: RecordedAudit, domain: Unreachable
) -> None:
    app = build_app(audit, domain)

    @app.get("/v1/unclassified")
    def unclassified() -> dict[str, str]:
        return {"ok": "yes"}

    with TestClient(app) as test_client:
        assert test_client.get("/v1/unclassified", headers=as_("officer")).status_code == 403
        assert test_client.get("/v1/unclassified", headers=as_("root")).json() == {"ok": "yes"}


class RecordingAgents(Unreachable):
    def __init__(self) -> None:
        super().__init__()
        self.actors: list[Actor] = []

    def ban(self, agent_id: SpiffeId, actor: Actor) -> Agent:
        self.actors.append(actor)
        return Agent(agent_id, "join_token", 1, NOW, True, NOW, NOW)


def test_an_allowed_call_runs_as_its_caller_under_the_role_that_allowed_it(
    audit: RecordedAudit, domain: Unreachable
) -> None:
    agents = RecordingAgents()
    app = build_app(audit, domain, agents)
    body = {"spiffe_id": "spiffe://example.org/trustmesh/agent/join_token/n1"}
    with TestClient(app) as test_client:
        assert test_client.post("/v1/agents/ban", json=body, headers=as_("officer")).status_code == 200
        assert test_client.post("/v1/agents/ban", json=body, headers=as_("root")).status_code == 200

    assert agents.actors == [
        Actor("oidc:idp#olivia", "oidc", "security-officer"),
        Actor("unix:uid=0", "unix-socket", BREAK_GLASS_ROLE),
    ]
    assert audit.events == []


def test_a_request_body_over_the_bound_is_refused_413_before_the_route(client: TestClient, domain: Unreachable) -> None:
    response = client.post(
        "/v1/entries",
        content=b"{" + b" " * (1024 * 1024) + b"}",
        headers={**as_("operator"), "content-type": "application/json"},
    )

    assert (response.status_code, response.text) == (413, "Content Too Large")
    assert domain.calls == []
