"""The agent half of x509pop node attestation (issue 10; :mod:`bridge.x509pop`): a brownfield host
proves it holds the key of its enterprise certificate. ``AttestChallenge`` sends the certificate and
its chain; the CA answers a nonce, which the key signs for ``Attest``, sent with the same chain again
(the CA keeps nothing between the two steps, so they may reach different CA replicas).

The files are read at each attestation, not at start-up, so a certificate renewed by the enterprise's
own tooling is used the next time the agent attests. Unlike a join token the proof can be repeated, so
an agent whose SVID expired attests again on its own. The key is never logged or sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bridge.legacy_chain import load_certificates, read_pki_file
from bridge.possession import SigningKey, load_signing_key
from bridge.x509pop import X509POP, encode_evidence, encode_response, sign_challenge
from sds.node_client import AttestResult
from spiffe_core.bundle import Bundle
from spiffe_core.errors import ConfigError, InvalidArgument

_MAX_KEY_FILE_BYTES = 64 * 1024


class ChallengeApi(Protocol):
    """The two attestation calls of :class:`sds.node_client.NodeClient` this uses."""

    async def challenge(self, roots: Bundle, method: str, payload: bytes) -> bytes: ...
    async def attest(self, roots: Bundle, method: str, payload: bytes, csr: bytes) -> AttestResult: ...


@dataclass(frozen=True, slots=True)
class X509PopProof:
    """``cert_file`` (the host's certificate, may carry its chain), ``key_file`` (its key, PEM) and
    ``chain_file`` (intermediates, if not in ``cert_file``), as ``[x509pop]`` names them."""

    cert_file: Path
    key_file: Path
    chain_file: Path | None = None

    def evidence(self) -> bytes:
        """The chain to present, leaf first; ConfigError naming the setting whose file is bad."""
        try:
            chain = load_certificates(read_pki_file(self.cert_file, "x509pop.cert_file"), str(self.cert_file))
            if self.chain_file is not None:
                chain += load_certificates(read_pki_file(self.chain_file, "x509pop.chain_file"), str(self.chain_file))
        except InvalidArgument as err:
            raise ConfigError(f"{err}; point it at the host's enterprise certificate (PEM)") from err
        return encode_evidence(chain)

    async def attest(self, client: ChallengeApi, roots: Bundle, csr: bytes) -> AttestResult:
        """Both steps against the CA verified by ``roots``: present the chain, sign the nonce and send
        it with the same chain. Both files are read first, so a broken one is reported before the CA is
        called."""
        key = self._key()
        evidence = self.evidence()
        nonce = await client.challenge(roots, X509POP, evidence)
        answer = encode_response(nonce, sign_challenge(key, nonce), evidence)
        return await client.attest(roots, X509POP, answer, csr)

    def _key(self) -> SigningKey:
        try:
            with self.key_file.open("rb") as file:
                data = file.read(_MAX_KEY_FILE_BYTES)
            return load_signing_key(data, f"x509pop.key_file {self.key_file}")
        except OSError as err:
            raise ConfigError(f"x509pop.key_file: cannot read {self.key_file} ({err.strerror})") from err
        except InvalidArgument as err:
            raise ConfigError(f"{err}; it must be the key of x509pop.cert_file") from err
