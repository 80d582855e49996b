"""Crash safety of the authority lifecycle (DESIGN §3 "Authorities"; the rotation issue's acceptance
item "kill -9 of the CA at each step of a rotation — prepare, activate, taint, revoke, prune — restart:
state consistent, no duplicate serial, traffic recovers").

Real processes: a CA, one agent and two Envoys doing mTLS on the agent's SVIDs under continuous
requests. Each test drives a rotation up to one step and SIGKILLs the CA while that step runs:

* an officer step is POSTed to the admin socket (the request ``trustmesh-ca authority …`` sends) and
  the CA is killed a seeded-random fraction of the step's latency (measured on its dry run) later, so
  kills land before, inside and after its transaction; when the kill stopped the step, a second round
  aims past its commit;
* a prune, done by the CA's rotation task, is killed 0-2 ms after the CA logs it, which it does
  inside the transaction, before the commit and before the key is deleted. The pruned authority is a
  prepared one that was tainted: it is pruned one refresh hint later, where one that signed SVIDs
  would wait for them all to expire.

After every restart on the same data directory:

* the step is applied whole or not at all: the authorities' states equal those before the step or
  those after it, never anything in between (never two active authorities, never none);
* the bundle publishes exactly the authorities that are not revoked;
* every serial the Envoys serve is recorded once, by an authority that is not revoked, and no serial
  is recorded twice or for an authority that is gone;
* every stored authority still has its private key.

Then the step is completed if the kill stopped it (the officer runs the command again; the rotation
task prunes on its own), and the trust domain must recover: requests through the Envoys succeed
within 10 s of the restart (in fact none fails: the Envoys' SVIDs outlive the outage), the Envoys
trust exactly the CA's bundle and leave a tainted authority's SVIDs, and the agent — never
restarted — signs a registration entry created afterwards.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import statistics
import threading
import time
from base64 import b64decode
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509

from tests.e2e.test_mesh import UID, envoy_pair, fetch_secret, get_through, start_agent, wait_for_mtls
from tests.support.envoy import Envoy, running_envoy
from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import wait_until
from tests.support.traffic import Traffic, continuous_requests

pytestmark = pytest.mark.e2e

# SVIDs live an hour, so a CA outage never outlasts one and nothing but the test changes authorities.
CONFIG = """
[bundle]
refresh_hint = "1s"
"""
REFRESH_HINT = 1.0
# When to kill, as fractions of the step's latency: a second round, if the first stopped the step,
# aims past its commit (the client may even get its reply).
KILL_WINDOWS = ((0.0, 1.0), (1.0, 2.0))
# Envoys keep serving through a CA outage; the agent reconnects with backoff (0.5 s doubling, jittered),
# so after a CA restart of about 2 s it is back within about 4 to 8 s.
RECOVERY_SECONDS = 10.0
AGENT_RESUME_SECONDS = 20.0

# authority ID -> (kind, state)
States = dict[str, tuple[str, str]]


@dataclass
class CrashRig:
    """The running trust domain, with a CA that can be killed and restarted under the same agent and
    Envoys."""

    mesh: Mesh
    stack: contextlib.ExitStack
    traffic: Traffic
    agent_id: str
    envoys: tuple[Envoy, Envoy]
    frontend_port: int
    restarts: int = 0

    # -- the CA ------------------------------------------------------------------------------------

    def admin(self) -> httpx.Client:
        """A client of the CA's admin socket: what the ``trustmesh-ca`` CLI talks to."""
        socket_path = self.mesh.root / "ca" / "admin.sock"
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://trustmesh-ca", timeout=10
        )

    def authorities(self) -> list[dict[str, Any]]:
        with self.admin() as client:
            listed: list[dict[str, Any]] = client.get("/v1/authorities").raise_for_status().json()["authorities"]
        return listed

    def states(self) -> States:
        return {a["id"]: (a["kind"], a["state"]) for a in self.authorities()}

    def active_x509(self) -> str:
        (active,) = [i for i, (kind, state) in self.states().items() if kind == "x509" and state == "active"]
        return active

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.admin() as client:
            reply: dict[str, Any] = client.post(path, json=body).raise_for_status().json()
        return reply

    def latency(self, path: str, body: dict[str, Any]) -> float:
        """How long the step takes, measured on its dry run (the same checks, nothing written)."""
        timings = []
        with self.admin() as client:
            for _ in range(3):
                started = time.monotonic()
                client.post(path, json={**body, "dry_run": True}).raise_for_status()
                timings.append(time.monotonic() - started)
        return statistics.median(timings)

    def post_and_kill(self, path: str, body: dict[str, Any], delay: float) -> str:
        """POST ``body`` and SIGKILL the CA ``delay`` seconds after sending it; return what the client saw."""
        seen: list[str] = []
        with self.admin() as client:

            def send() -> None:
                try:
                    seen.append(str(client.post(path, json=body).status_code))
                except httpx.HTTPError as err:
                    seen.append(type(err).__name__)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            time.sleep(delay)
            self.kill_ca()
            sender.join(timeout=10)
        return seen[0] if seen else "no reply"

    def kill_ca(self) -> None:
        ca = self.mesh.processes["ca"]
        os.kill(ca.pid, signal.SIGKILL)
        ca.wait(timeout=10)

    def restart_ca(self) -> None:
        self.restarts += 1
        self.stack.enter_context(self.mesh.running_ca(log_name=f"ca-restart-{self.restarts}.log"))

    def kill_ca_once_it_logs(self, line: str, delay: float, timeout: float) -> None:
        """SIGKILL the CA ``delay`` seconds after its log shows ``line`` (polled every millisecond or two)."""
        name = f"ca-restart-{self.restarts}.log" if self.restarts else "ca.log"
        with (self.mesh.root / name).open("rb") as log:
            seen = b""
            deadline = time.monotonic() + timeout
            while line.encode() not in seen:
                assert time.monotonic() < deadline, f"the CA did not log {line!r} within {timeout} s"
                seen = seen[-len(line) :] + log.read()
                time.sleep(0.001)
        time.sleep(delay)
        self.kill_ca()

    # -- what the Envoys hold ----------------------------------------------------------------------

    def served_serials(self) -> set[int]:
        return set().union(*(envoy.certificate_serials() for envoy in self.envoys))

    def trusted_ca_serials(self) -> set[int]:
        serials: set[int] = set()
        for envoy in self.envoys:
            for context in envoy.admin_json("/certs").get("certificates", []):
                serials |= {int(cert["serial_number"], 16) for cert in context.get("ca_cert", [])}
        return serials


@contextlib.contextmanager
def crash_rig(tmp_path: Path) -> Iterator[CrashRig]:
    mesh = Mesh(tmp_path)
    mesh.write_ca_config(CONFIG)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mesh.running_ca())
        agent_config, agent_id = start_agent(mesh)
        backend, frontend, _, frontend_port = envoy_pair(mesh)
        stack.enter_context(mesh.running_agent(agent_config))
        envoys = (
            stack.enter_context(running_envoy(backend, tmp_path, "backend")),
            stack.enter_context(running_envoy(frontend, tmp_path, "frontend")),
        )
        wait_for_mtls(frontend_port)
        traffic = stack.enter_context(continuous_requests(frontend_port, max_seconds=120))
        yield CrashRig(mesh, stack, traffic, agent_id, envoys, frontend_port)


# -- the steps -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One officer step: its admin route and body, the same as a ``trustmesh-ca`` command, and the
    authority states once it is applied (``None``: a new prepared X.509 authority appears)."""

    path: str
    body: dict[str, Any]
    cli: tuple[str, ...]
    applied: Callable[[States], States | None]


# Each ``reach_*`` drives a normal rotation up to its step and returns that step, not yet applied.


def reach_prepare(rig: CrashRig) -> Operation:
    return Operation("/v1/authorities/prepare", {"kind": "x509"}, ("authority", "prepare"), lambda before: None)


def reach_activate(rig: CrashRig) -> Operation:
    old = rig.active_x509()
    new = rig.post("/v1/authorities/prepare", {"kind": "x509"})["changes"][0]["authority_id"]
    time.sleep(2 * REFRESH_HINT + 0.1)  # published for two refresh hints before it may sign
    return Operation(
        f"/v1/authorities/{new}/activate",
        {"force": False},
        ("authority", "activate", new),
        lambda before: {**before, new: ("x509", "active"), old: ("x509", "retired")},
    )


def reach_taint(rig: CrashRig) -> Operation:
    old = rig.active_x509()
    activate = reach_activate(rig)
    rig.post(activate.path, activate.body)
    return Operation(
        f"/v1/authorities/{old}/taint",
        {},
        ("authority", "taint", old),
        lambda before: {**before, old: ("x509", "tainted")},
    )


def reach_revoke(rig: CrashRig) -> Operation:
    old = rig.active_x509()
    taint = reach_taint(rig)
    leave_authority(rig, old, taint)
    return Operation(
        f"/v1/authorities/{old}/revoke",
        {},
        ("authority", "revoke", old),
        lambda before: {**before, old: ("x509", "revoked")},
    )


def leave_authority(rig: CrashRig, old: str, taint: Operation) -> None:
    """Taint ``old`` and wait until nothing alive in the mesh holds an SVID it signed, as an officer
    does before revoking it."""
    signed_by_old = recorded_serials(rig.mesh, old)
    rig.post(taint.path, taint.body)
    wait_until(lambda: rig.served_serials().isdisjoint(signed_by_old), 10, "both Envoys to leave the tainted authority")
    wait_until(lambda: agent_renewed_after_taint(rig), 10, "the agent to renew its own SVID")


def agent_renewed_after_taint(rig: CrashRig) -> bool:
    log = (rig.mesh.root / "agent.log").read_text(errors="replace")
    tainted_at = log.find("must be replaced (signing authority tainted)")
    return tainted_at >= 0 and "renewed agent SVID" in log[tainted_at:]


REACH: dict[str, Callable[[CrashRig], Operation]] = {
    "prepare": reach_prepare,
    "activate": reach_activate,
    "taint": reach_taint,
    "revoke": reach_revoke,
}


# -- the checks ------------------------------------------------------------------------------------------


def datastore(mesh: Mesh) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{mesh.root / 'ca' / 'datastore.sqlite3'}?mode=ro", uri=True)


def recorded_serials(mesh: Mesh, authority_id: str) -> set[int]:
    with contextlib.closing(datastore(mesh)) as db:
        rows = db.execute("SELECT serial FROM issued_certificates WHERE authority_id = ?", (authority_id,))
        return {int(serial, 16) for (serial,) in rows}


def step_outcome(step: str, before: States, after: States, operation: Operation | None) -> bool:
    """Whether the killed step took effect; fails unless it took effect whole or not at all.
    ``operation`` None stands for the prune of one authority."""
    if after == before:
        return False
    gone, new = set(before) - set(after), set(after) - set(before)
    if operation is None:
        assert len(gone) == 1, f"prune removed {len(gone)} authorities: {before} -> {after}"
        assert after == {i: before[i] for i in after}, f"prune changed more than it removed: {before} -> {after}"
        return True
    expected = operation.applied(before)
    if expected is None:
        assert not gone, f"prepare removed authorities: {before} -> {after}"
        assert {i: after[i] for i in before} == before, f"prepare changed existing authorities: {before} -> {after}"
        assert [after[i] for i in new] == [("x509", "prepared")], f"prepare half-applied: {before} -> {after}"
        return True
    assert after == expected, f"{step} half-applied: before {before}, after {after}; expected one of the two"
    return True


def assert_consistent(rig: CrashRig) -> None:
    """The invariants of a restarted CA: one active authority per kind, the bundle, serials, keys."""
    authorities = rig.authorities()
    for kind in ("x509", "jwt"):
        states = [a["state"] for a in authorities if a["kind"] == kind]
        assert states.count("active") == 1, f"{kind} authorities after restart: {states}"
        assert states.count("prepared") <= 1, f"{kind} authorities after restart: {states}"

    with rig.admin() as client:
        bundle = client.get("/v1/bundle", params={"format": "spiffe"}).raise_for_status().json()
    published_x509 = {
        x509.load_der_x509_certificate(b64decode(key["x5c"][0])).serial_number
        for key in bundle["keys"]
        if key["use"] == "x509-svid"
    }
    published_jwt = {key["kid"] for key in bundle["keys"] if key["use"] == "jwt-svid"}
    unrevoked = [a for a in authorities if a["state"] != "revoked"]
    assert published_x509 == {
        x509.load_pem_x509_certificate(a["certificate_pem"].encode()).serial_number
        for a in unrevoked
        if a["kind"] == "x509"
    }
    assert published_jwt == {a["id"] for a in unrevoked if a["kind"] == "jwt"}

    served = rig.served_serials()
    with contextlib.closing(datastore(rig.mesh)) as db:
        duplicates = db.execute(
            "SELECT serial, COUNT(*) FROM issued_certificates GROUP BY serial HAVING COUNT(*) > 1"
        ).fetchall()
        orphaned = db.execute(
            "SELECT COUNT(*) FROM issued_certificates WHERE authority_id NOT IN (SELECT id FROM authorities)"
        ).fetchone()[0]
        recorded = {
            int(serial, 16): authority
            for serial, authority in db.execute("SELECT serial, authority_id FROM issued_certificates")
        }
        key_refs = {key_ref for (key_ref,) in db.execute("SELECT key_ref FROM authorities")}
    assert duplicates == []
    assert orphaned == 0, "issuance records of an authority that is gone"
    assert served, "the Envoys serve no SVID"
    assert served <= set(recorded), f"served serials not recorded: {served - set(recorded)}"
    state_of = {a["id"]: a["state"] for a in authorities}
    assert {state_of[recorded[serial]] for serial in served} <= {"active", "retired", "tainted"}
    key_files = {p.name.removesuffix(".pem") for p in (rig.mesh.root / "ca" / "keys").glob("*.pem")}
    assert key_refs <= key_files, f"authorities without their key: {key_refs - key_files}"


def assert_recovers(rig: CrashRig, avoid: str | None = None) -> None:
    """Requests through the Envoys succeed again at once; the agent — never restarted — comes back
    within its reconnect backoff: the Envoys trust exactly the CA's bundle (and leave the SVIDs of
    ``avoid``, a tainted authority), and an entry created now is signed and served."""

    def request_succeeds() -> bool:
        try:
            return get_through(rig.frontend_port).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(request_succeeds, RECOVERY_SECONDS, "a request through the Envoys to succeed after the restart")
    recovered_at = len(rig.traffic.results)

    def envoys_follow_bundle() -> bool:
        published = {
            x509.load_pem_x509_certificate(a["certificate_pem"].encode()).serial_number
            for a in rig.authorities()
            if a["kind"] == "x509" and a["state"] != "revoked"
        }
        return rig.trusted_ca_serials() == published

    wait_until(envoys_follow_bundle, AGENT_RESUME_SECONDS, "both Envoys to trust exactly the restarted CA's bundle")
    if avoid is not None:
        signed_by_avoided = recorded_serials(rig.mesh, avoid)
        wait_until(
            lambda: rig.served_serials().isdisjoint(signed_by_avoided),
            AGENT_RESUME_SECONDS,
            "both Envoys to leave the tainted authority",
        )
    late = f"spiffe://{TRUST_DOMAIN}/late"
    rig.mesh.create_entry(late, rig.agent_id, UID)

    def signs_late() -> bool:
        try:
            return bool(fetch_secret(rig.mesh.sds_socket, late).resources)
        except grpc.RpcError:
            return False

    wait_until(signs_late, AGENT_RESUME_SECONDS, "the agent to resume its CA stream and sign the new entry")
    assert rig.mesh.processes["agent"].poll() is None
    assert get_through(rig.frontend_port).status_code == 200
    after_recovery = rig.traffic.results[recovered_at:]
    assert len(after_recovery) > 20
    assert [r for r in after_recovery if r != 200] == [], "requests failed after traffic had recovered"
    assert rig.traffic.failures == [], "the Envoys' SVIDs outlive a CA restart; no request may fail at all"
    print(f"\nrequests: {len(rig.traffic.results)}, failed: {len(rig.traffic.failures)}")


# -- the tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [pytest.param(step, id=step) for step in REACH])
def test_kill_9_during_an_officer_step_applies_it_whole_or_not_at_all_and_the_mesh_recovers(
    tmp_path: Path, step: str
) -> None:
    rng = random.Random(f"crash-safety-{step}")  # where the kill lands; not a secret
    with crash_rig(tmp_path) as rig:
        operation = REACH[step](rig)
        applied = False
        for low, high in KILL_WINDOWS:
            before = rig.states()
            latency = rig.latency(operation.path, operation.body)
            delay = rng.uniform(low, high) * latency
            seen = rig.post_and_kill(operation.path, {**operation.body, "dry_run": False}, delay)
            rig.restart_ca()
            applied = step_outcome(step, before, rig.states(), operation)
            print(
                f"\n{step}: takes {latency * 1000:.1f} ms, killed {delay * 1000:.1f} ms after sending; "
                f"client saw {seen}, applied: {applied}",
                end="",
            )
            assert_consistent(rig)
            if applied:
                break
        if not applied:  # the officer runs it again
            rig.mesh.ca(*operation.cli)
        tainted = next((i for i, (_, state) in rig.states().items() if state == "tainted"), None)
        assert_recovers(rig, avoid=tainted)


def test_kill_9_during_a_scheduled_prune_removes_the_authority_whole_or_not_at_all_and_the_mesh_recovers(
    tmp_path: Path,
) -> None:
    rng = random.Random("crash-safety-prune")  # where the kill lands; not a secret
    with crash_rig(tmp_path) as rig:
        # A prepared authority that is tainted at once signed nothing: the rotation task prunes it one
        # refresh hint later (the same transaction as for any authority: record, then key).
        doomed = rig.post("/v1/authorities/prepare", {"kind": "x509"})["changes"][0]["authority_id"]
        rig.post(f"/v1/authorities/{doomed}/taint", {})
        before = rig.states()
        delay = rng.uniform(0.0, 0.002)
        rig.kill_ca_once_it_logs(f"pruned x509 authority {doomed}", delay, timeout=20)
        rig.restart_ca()
        applied = step_outcome("prune", before, rig.states(), None)
        print(f"\nprune: killed {delay * 1000:.1f} ms after the CA logged it, applied: {applied}")
        assert_consistent(rig)
        wait_until(lambda: doomed not in rig.states(), 5, "the restarted CA to prune the tainted authority")
        assert_recovers(rig)
