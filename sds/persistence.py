"""What the agent keeps on disk so a restart during a CA outage keeps serving (DESIGN §4).

Two files in ``data_dir``, each written atomically and 0600 because each holds private keys:

* ``agent.json`` — the agent's own X509-SVID (chain and key) and the trust bundle it verifies the CA
  with. One file, so the key and the certificate can never be from different generations.
* ``workloads.json`` — the last state the CA sent (bundle, federated bundles, entries, revocations,
  CRLs, legacy roots) and the workload X509-SVIDs held for it, with their keys and rotation times.

Loading is strict about the agent's identity (a corrupt or foreign ``agent.json`` stops the agent
with the fix) and lenient about the workload cache (a corrupt ``workloads.json`` is ignored: the CA
sends everything again on the next Sync).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bridge.legacy_roots import check_legacy_roots
from sds.files import make_private_directory, write_private_file
from sds.node_client import EntryRecord, SyncState
from sds.planning import HeldSvid
from spiffe_core.bundle import Bundle
from spiffe_core.errors import FailedPrecondition, InvalidArgument
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import X509Svid

log = logging.getLogger(__name__)

AGENT_FILE = "agent.json"
WORKLOADS_FILE = "workloads.json"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class PersistedAgent:
    svid: X509Svid
    bundle: Bundle


@dataclass(frozen=True, slots=True)
class PersistedWorkloads:
    state: SyncState
    svids: tuple[HeldSvid, ...]


def _entry_doc(entry: EntryRecord) -> dict[str, Any]:
    return {
        "id": entry.id,
        "spiffe_id": str(entry.spiffe_id),
        "parent_id": str(entry.parent_id),
        "selectors": sorted(str(s) for s in entry.selectors),
        "dns_names": list(entry.dns_names),
        "x509_svid_ttl": None if entry.x509_svid_ttl is None else entry.x509_svid_ttl.total_seconds(),
        "jwt_svid_ttl": None if entry.jwt_svid_ttl is None else entry.jwt_svid_ttl.total_seconds(),
        "federates_with": sorted(td.name for td in entry.federates_with),
        "admin": entry.admin,
        "hint": entry.hint,
        "revision": entry.revision,
    }


def _ttl(value: Any) -> timedelta | None:
    return None if value is None else timedelta(seconds=float(value))


def _entry(doc: dict[str, Any]) -> EntryRecord:
    return EntryRecord(
        id=str(doc["id"]),
        spiffe_id=SpiffeId.parse(doc["spiffe_id"]),
        parent_id=SpiffeId.parse(doc["parent_id"]),
        selectors=frozenset(Selector.parse(s) for s in doc["selectors"]),
        dns_names=tuple(doc["dns_names"]),
        x509_svid_ttl=_ttl(doc["x509_svid_ttl"]),
        jwt_svid_ttl=_ttl(doc["jwt_svid_ttl"]),
        federates_with=frozenset(TrustDomain.parse(td) for td in doc["federates_with"]),
        admin=bool(doc["admin"]),
        hint=str(doc["hint"]),
        revision=int(doc["revision"]),
    )


def _held_doc(held: HeldSvid) -> dict[str, Any]:
    svid = X509Svid(held.spiffe_id, held.cert_chain, held.private_key)
    return {
        "entry_id": held.entry_id,
        "revision": held.revision,
        "chain_pem": svid.chain_pem().decode(),
        "key_pem": svid.key_pem().decode(),
        "rotate_at": held.rotate_at.isoformat(),
    }


def _held(doc: dict[str, Any]) -> HeldSvid:
    svid = X509Svid.parse_pem(doc["chain_pem"].encode(), doc["key_pem"].encode())
    rotate_at = datetime.fromisoformat(doc["rotate_at"])
    if rotate_at.tzinfo is None:
        raise InvalidArgument(f"rotate_at {doc['rotate_at']!r} has no time zone")
    return HeldSvid(
        str(doc["entry_id"]), int(doc["revision"]), svid.spiffe_id, svid.cert_chain, svid.private_key, rotate_at
    )


def _state_doc(state: SyncState) -> dict[str, Any]:
    return {
        "version": state.version,
        "bundle": state.bundle.to_jwks(),
        "federated_bundles": {td.name: bundle.to_jwks() for td, bundle in state.federated_bundles.items()},
        "entries": [_entry_doc(entry) for entry in state.entries],
        "tainted_authority_ids": sorted(state.tainted_authority_ids),
        "revoked_serials": sorted(f"{serial:x}" for serial in state.revoked_serials),
        "crls": [base64.b64encode(crl).decode() for crl in state.crls],
        "legacy_roots": {name: pem.decode() for name, pem in state.legacy_roots.items()},
    }


def _state(trust_domain: TrustDomain, doc: dict[str, Any]) -> SyncState:
    return SyncState(
        version=int(doc["version"]),
        bundle=Bundle.parse_jwks(trust_domain, doc["bundle"]),
        federated_bundles={
            TrustDomain.parse(name): Bundle.parse_jwks(TrustDomain.parse(name), jwks)
            for name, jwks in doc["federated_bundles"].items()
        },
        entries=tuple(_entry(entry) for entry in doc["entries"]),
        tainted_authority_ids=frozenset(str(i) for i in doc["tainted_authority_ids"]),
        revoked_serials=frozenset(int(s, 16) for s in doc["revoked_serials"]),
        crls=tuple(base64.b64decode(crl, validate=True) for crl in doc["crls"]),
        # Absent from files written before legacy roots existed: the next Sync brings them.
        legacy_roots=check_legacy_roots({name: pem.encode() for name, pem in doc.get("legacy_roots", {}).items()}),
    )


class AgentStore:
    """The agent's files in ``data_dir`` (made 0700). Blocking: call from a worker thread on a loop."""

    def __init__(self, data_dir: Path, trust_domain: TrustDomain) -> None:
        self._dir = data_dir
        self._trust_domain = trust_domain

    @property
    def agent_path(self) -> Path:
        return self._dir / AGENT_FILE

    @property
    def workloads_path(self) -> Path:
        return self._dir / WORKLOADS_FILE

    def _write(self, path: Path, doc: dict[str, Any]) -> None:
        make_private_directory(self._dir)
        write_private_file(path, json.dumps({"format": _FORMAT, **doc}, sort_keys=True).encode())

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"format {doc.get('format') if isinstance(doc, dict) else None!r} is not {_FORMAT}")
        trust_domain = doc.get("trust_domain")
        if trust_domain != self._trust_domain.name:
            raise FailedPrecondition(
                f"{path} belongs to trust domain {trust_domain!r}, not the configured {self._trust_domain}; "
                "point data_dir at another directory, or delete the file to attest afresh"
            )
        return doc

    def save_agent(self, svid: X509Svid, bundle: Bundle) -> None:
        self._write(
            self.agent_path,
            {
                "trust_domain": self._trust_domain.name,
                "chain_pem": svid.chain_pem().decode(),
                "key_pem": svid.key_pem().decode(),
                "bundle": bundle.to_jwks(),
            },
        )

    def load_agent(self) -> PersistedAgent | None:
        """The saved agent SVID and bundle, or None before the first attestation. Raises
        FailedPrecondition for a file that is unreadable or of another trust domain, with the fix."""
        with self._agent_file() as doc:
            if doc is None:
                return None
            svid = X509Svid.parse_pem(doc["chain_pem"].encode(), doc["key_pem"].encode())
            return PersistedAgent(svid, Bundle.parse_jwks(self._trust_domain, doc["bundle"]))

    def load_bundle(self) -> Bundle | None:
        """The trust bundle the agent holds now (saved with its SVID, and again on every change the CA
        pushes), or None before the first attestation; raises as :meth:`load_agent`. The key is not read."""
        with self._agent_file() as doc:
            return None if doc is None else Bundle.parse_jwks(self._trust_domain, doc["bundle"])

    @contextlib.contextmanager
    def _agent_file(self) -> Iterator[dict[str, Any] | None]:
        """``agent.json`` as a document (None when missing); anything that goes wrong reading it inside
        the block becomes FailedPrecondition with the fix."""
        try:
            yield self._read(self.agent_path)
        except FailedPrecondition:
            raise
        except PermissionError as err:
            raise FailedPrecondition(
                f"{self.agent_path}: permission denied; run this as the agent's user (or root)"
            ) from err
        except (OSError, ValueError, KeyError, TypeError, InvalidArgument) as err:
            raise FailedPrecondition(
                f"{self.agent_path} is unreadable ({err}); delete it and restart the agent with a new join token"
            ) from err

    def save_workloads(self, state: SyncState, svids: tuple[HeldSvid, ...]) -> None:
        self._write(
            self.workloads_path,
            {
                "trust_domain": self._trust_domain.name,
                "state": _state_doc(state),
                "svids": [_held_doc(h) for h in svids],
            },
        )

    def load_workloads(self) -> PersistedWorkloads | None:
        """The saved state and workload SVIDs, or None when there are none or the file is unusable
        (logged: the CA sends everything again, so a lost cache costs only time)."""
        try:
            doc = self._read(self.workloads_path)
            if doc is None:
                return None
            return PersistedWorkloads(
                _state(self._trust_domain, doc["state"]), tuple(_held(item) for item in doc["svids"])
            )
        except (OSError, ValueError, KeyError, TypeError, InvalidArgument, FailedPrecondition) as err:
            log.warning(
                "ignoring the saved workload SVIDs in %s (%s); they will be signed again", self.workloads_path, err
            )
            return None
