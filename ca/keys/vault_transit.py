"""Keys in Vault's transit secrets engine (DESIGN §3 "Key custody", ``vault-transit``): the private key
is created in Vault as non-exportable and never leaves it; Vault signs.

:meth:`VaultTransitKeyManager.get` returns a :class:`TransitEcKey` or :class:`TransitRsaKey`: a
cryptography private-key object whose ``sign`` asks Vault (``POST <mount>/sign/<name>``) and checks the
answer against the key's public key before returning it, so CertificateBuilder, CRL and CSR builders
and pyjwt use it like any other key. Everything that would reveal the private key (``private_bytes``,
``private_numbers``) raises FailedPrecondition. Each ``sign`` is one round trip to Vault; ``sign_batch``
(:class:`~ca.signing.BatchSigningKey`, which X509-SVID issuance uses) signs up to
:data:`MAX_BATCH_ITEMS` messages per round trip with Vault's ``batch_input``, so a batch of SVIDs
costs one round trip, not one per SVID (docs/vault.md).

Transit key names are ``key_prefix`` + the CA's key ID. A key is signed with the version the CA read
(its first), so a rotation done in Vault by hand cannot swap the key under a certificate.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.asymmetric import padding as asymmetric_padding
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.utils import Buffer

from ca.keys.base import check_key_id
from ca.vault import MAX_REASON_CHARS, VaultClient
from spiffe_core.errors import AlreadyExists, FailedPrecondition, NotFound
from spiffe_core.keys import KeyType, PrivateKey, key_type_of

USER = "vault-transit key manager"
TRANSIT_KEY_TYPES = {
    KeyType.EC_P256: "ecdsa-p256",
    KeyType.EC_P384: "ecdsa-p384",
    KeyType.RSA_2048: "rsa-2048",
    KeyType.RSA_3072: "rsa-3072",
    KeyType.RSA_4096: "rsa-4096",
}
_NANOSECONDS = re.compile(r"(\.\d{6})\d+")
# Inputs per transit sign request. Vault documents no limit; this one bounds a request body (about
# 0.9 MB of base64 for X509-SVID TBS certificates) well under Vault's default max_request_size of 32 MiB.
MAX_BATCH_ITEMS = 1000
_TRANSIT_HASHES = {"sha224": "sha2-224", "sha256": "sha2-256", "sha384": "sha2-384", "sha512": "sha2-512"}


class TransitSigner:
    """Signs with one version of one transit key, and checks each signature before returning it."""

    def __init__(self, vault: VaultClient, mount: str, name: str, version: int) -> None:
        self._vault = vault
        self._mount = mount
        self.name = name
        self._version = version
        self._path = f"{mount}/sign/{name}"

    def sign(
        self,
        data: Buffer,
        algorithm: hashes.HashAlgorithm | utils.Prehashed,
        verify: Callable[[bytes, bytes], None],
        *,
        rsa_pkcs1v15: bool,
    ) -> bytes:
        """Vault's DER (ECDSA) or PKCS#1 v1.5 signature of ``data``, once ``verify(signature, data)``
        (the public key's check) passed. FailedPrecondition for a hash transit does not offer, and for
        a signature that does not verify."""
        message = bytes(data)
        prehashed = isinstance(algorithm, utils.Prehashed)
        # Prehashed keeps its hash private; cryptography offers no public accessor.
        digest = algorithm._algorithm if isinstance(algorithm, utils.Prehashed) else algorithm
        options = self._options(digest, rsa_pkcs1v15)
        response = self._vault.call(
            lambda client: client.secrets.transit.sign_data(
                self.name, hash_input=base64.b64encode(message).decode(), prehashed=prehashed or None, **options
            ),
            path=self._path,
            capability="update",
        )
        answer = self._vault.field(self._vault.data(response, self._path), "signature", str, self._path)
        return self._checked(answer, message, verify)

    def sign_batch(
        self,
        messages: Sequence[bytes],
        algorithm: hashes.HashAlgorithm,
        verify: Callable[[bytes, bytes], None],
        *,
        rsa_pkcs1v15: bool,
    ) -> list[bytes]:
        """:meth:`sign` for many messages, in one request (Vault's ``batch_input``) per
        :data:`MAX_BATCH_ITEMS`. Every signature is checked as :meth:`sign` checks it; an item Vault
        refuses, or a signature that does not verify, fails the whole batch (FailedPrecondition naming
        the item), as one failed :meth:`sign` fails a batch signed one by one."""
        options = self._options(algorithm, rsa_pkcs1v15)
        signatures: list[bytes] = []
        for start in range(0, len(messages), MAX_BATCH_ITEMS):
            chunk = messages[start : start + MAX_BATCH_ITEMS]
            for index, (message, result) in enumerate(zip(chunk, self._sign_chunk(chunk, options), strict=True), start):
                signatures.append(self._checked(self._batch_signature(result, index, len(messages)), message, verify))
        return signatures

    def _options(self, digest: hashes.HashAlgorithm, rsa_pkcs1v15: bool) -> dict[str, Any]:
        """The parameters of a sign request but its input: pinned key version, hash, signature format."""
        transit_hash = _TRANSIT_HASHES.get(digest.name)
        if transit_hash is None:
            raise FailedPrecondition(f"{USER}: Vault transit cannot sign with {digest.name}; use SHA-256 or SHA-384")
        scheme = {"signature_algorithm": "pkcs1v15"} if rsa_pkcs1v15 else {"marshaling_algorithm": "asn1"}
        return {"key_version": self._version, "hash_algorithm": transit_hash, "mount_point": self._mount, **scheme}

    def _sign_chunk(self, chunk: Sequence[bytes], options: dict[str, Any]) -> list[object]:
        """Vault's ``batch_results`` for one request, one per message (checked: Vault keeps the order)."""
        batch = [{"input": base64.b64encode(message).decode()} for message in chunk]
        response = self._vault.call(
            lambda client: client.secrets.transit.sign_data(self.name, batch_input=batch, **options),
            path=self._path,
            capability="update",
        )
        results: list[object] = self._vault.field(
            self._vault.data(response, self._path), "batch_results", list, self._path
        )
        if len(results) != len(chunk):
            raise FailedPrecondition(
                f"{USER}: Vault at {self._vault.address} answered {len(results)} batch results to {len(chunk)} "
                f"inputs on {self._path}; is that a Vault server?"
            )
        return results

    def _batch_signature(self, result: object, index: int, total: int) -> str:
        """The ``signature`` of one batch result; FailedPrecondition with Vault's reason for an ``error``."""
        if not isinstance(result, dict):
            raise FailedPrecondition(
                f"{USER}: Vault at {self._vault.address} answered {self._path} with a batch result that is not an "
                "object; is that a Vault server?"
            )
        error = result.get("error")
        if error:
            reason = " ".join(str(error).split())[:MAX_REASON_CHARS]
            raise FailedPrecondition(
                f"{USER}: Vault at {self._vault.address} refused to sign batch item #{index} of {total} on "
                f"{self._path}: {reason}; refusing the whole batch"
            )
        return self._vault.field(result, "signature", str, self._path)

    def _checked(self, answer: str, message: bytes, verify: Callable[[bytes, bytes], None]) -> bytes:
        """The signature in Vault's ``vault:v<n>:<base64>`` answer, once it verifies over ``message``."""
        signature = _decode_signature(answer, self._version, self._path)
        try:
            verify(signature, message)
        except InvalidSignature:
            raise FailedPrecondition(
                f"{USER}: Vault at {self._vault.address} returned a signature of {self._path} that does not verify "
                "with that key's public key; refusing it (was the key rotated or replaced in Vault?)"
            ) from None
        return signature


class _HeldInVault:
    """What both key kinds share: the private key is in Vault, so nothing can export it or use it for
    anything but signing, and a copy is the same reference to the same Vault key."""

    _signer: TransitSigner

    def _refused(self, what: str) -> FailedPrecondition:
        return FailedPrecondition(f"{USER}: key {self._signer.name} lives in Vault's transit engine; {what}")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,  # cryptography's parameter name
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise self._refused("it cannot be exported, only Vault signs with it")

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self


class TransitEcKey(_HeldInVault, ec.EllipticCurvePrivateKey):
    """An EC private key held by Vault transit: signs (ECDSA) through Vault, exports nothing."""

    def __init__(self, signer: TransitSigner, public: ec.EllipticCurvePublicKey) -> None:
        self._signer = signer
        self._public = public

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise self._refused("it signs only ECDSA")
        return self._signer.sign(
            data,
            signature_algorithm.algorithm,
            lambda signature, message: self._public.verify(signature, message, signature_algorithm),
            rsa_pkcs1v15=False,
        )

    def sign_batch(self, messages: Sequence[bytes], algorithm: hashes.HashAlgorithm) -> list[bytes]:
        """ECDSA signatures of ``messages`` with hash ``algorithm``, in one Vault request per
        :data:`MAX_BATCH_ITEMS` (:class:`~ca.signing.BatchSigningKey`)."""
        ecdsa = ec.ECDSA(algorithm)
        return self._signer.sign_batch(
            messages,
            algorithm,
            lambda signature, message: self._public.verify(signature, message, ecdsa),
            rsa_pkcs1v15=False,
        )

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise self._refused("it only signs")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise self._refused("it cannot be exported, only Vault signs with it")


class TransitRsaKey(_HeldInVault, rsa.RSAPrivateKey):
    """An RSA private key held by Vault transit: signs (PKCS#1 v1.5) through Vault, exports nothing."""

    def __init__(self, signer: TransitSigner, public: rsa.RSAPublicKey) -> None:
        self._signer = signer
        self._public = public

    def sign(
        self,
        data: Buffer,
        padding: AsymmetricPadding,
        algorithm: utils.Prehashed | hashes.HashAlgorithm | utils.NoDigestInfo,
    ) -> bytes:
        if not isinstance(padding, asymmetric_padding.PKCS1v15) or isinstance(algorithm, utils.NoDigestInfo):
            raise self._refused("it signs only PKCS#1 v1.5 over a hash")
        return self._signer.sign(
            data,
            algorithm,
            lambda signature, message: self._public.verify(signature, message, padding, algorithm),
            rsa_pkcs1v15=True,
        )

    def sign_batch(self, messages: Sequence[bytes], algorithm: hashes.HashAlgorithm) -> list[bytes]:
        """PKCS#1 v1.5 signatures of ``messages`` with hash ``algorithm``, in one Vault request per
        :data:`MAX_BATCH_ITEMS` (:class:`~ca.signing.BatchSigningKey`)."""
        pkcs1v15 = asymmetric_padding.PKCS1v15()
        return self._signer.sign_batch(
            messages,
            algorithm,
            lambda signature, message: self._public.verify(signature, message, pkcs1v15, algorithm),
            rsa_pkcs1v15=True,
        )

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise self._refused("it only signs")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise self._refused("it cannot be exported, only Vault signs with it")


class VaultTransitKeyManager:
    """A :class:`~ca.keys.base.KeyManager` whose keys are non-exportable transit keys named
    ``prefix + key ID`` in the transit engine mounted at ``mount``. All calls block on Vault."""

    def __init__(self, vault: VaultClient, mount: str, prefix: str) -> None:
        self._vault = vault
        self._mount = mount
        self._prefix = prefix

    def _name(self, key_id: str) -> str:
        return self._prefix + check_key_id(key_id)

    def generate(self, key_id: str, key_type: KeyType) -> PrivateKey:
        name = self._name(key_id)
        if self._read(name) is not None:
            raise AlreadyExists(
                f"key {key_id!r} exists already in Vault transit ({self._mount}/keys/{name}); choose a new key ID"
            )
        self._vault.call(
            lambda client: client.secrets.transit.create_key(
                name,
                key_type=TRANSIT_KEY_TYPES[key_type],
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=self._mount,
            ),
            path=f"{self._mount}/keys/{name}",
            capability="create",
        )
        data = self._read(name)
        if data is None:
            raise FailedPrecondition(f"{USER}: Vault at {self._vault.address} lost key {name} right after creating it")
        key = self._key(name, data)
        if key_type_of(key) is not key_type:
            raise FailedPrecondition(
                f"{USER}: Vault created {self._mount}/keys/{name} as {key_type_of(key)}, not {key_type}"
            )
        return key

    def get(self, key_id: str) -> PrivateKey:
        name = self._name(key_id)
        data = self._read(name)
        if data is None:
            raise NotFound(
                f"key {key_id!r} is not in Vault transit at {self._vault.address} ({self._mount}/keys/{name})"
            )
        return self._key(name, data)

    def delete(self, key_id: str) -> None:
        """Allow deletion on the key (transit refuses to delete keys otherwise), then delete it."""
        name = self._name(key_id)
        if self._read(name) is None:
            return  # Vault answers 400, not 404, when configuring a missing key
        path = f"{self._mount}/keys/{name}"
        self._vault.call(
            lambda client: client.secrets.transit.update_key_configuration(
                name, deletion_allowed=True, mount_point=self._mount
            ),
            path=f"{path}/config",
            capability="update",
        )
        self._vault.call(
            lambda client: client.secrets.transit.delete_key(name, mount_point=self._mount),
            path=path,
            capability="delete",
        )

    def list(self) -> tuple[tuple[str, datetime], ...]:
        path = f"{self._mount}/keys"
        try:
            response = self._vault.call(
                lambda client: client.secrets.transit.list_keys(mount_point=self._mount), path=path, capability="list"
            )
        except NotFound:
            return ()  # Vault answers 404 to a LIST with nothing to list
        names = self._vault.field(self._vault.data(response, path), "keys", list, path)
        listed = []
        for name in names:
            if not isinstance(name, str) or not name.startswith(self._prefix):
                continue
            data = self._read(name)
            if data is not None:
                listed.append((name[len(self._prefix) :], self._version_of(name, data)[1]))
        return tuple(listed)

    def _read(self, name: str) -> dict[str, Any] | None:
        """The key's description (``GET <mount>/keys/<name>``), or None when there is no such key."""
        path = f"{self._mount}/keys/{name}"
        try:
            response = self._vault.call(
                lambda client: client.secrets.transit.read_key(name, mount_point=self._mount),
                path=path,
                capability="read",
            )
        except NotFound:
            return None
        return dict(self._vault.data(response, path))

    def _version_of(self, name: str, data: dict[str, Any]) -> tuple[int, datetime, str]:
        """The key's first version, its creation time and its public key (PEM)."""
        path = f"{self._mount}/keys/{name}"
        versions = self._vault.field(data, "keys", dict, path)
        try:
            number = min(int(v) for v in versions)
            entry = versions[str(number)]
            created = _parse_time(entry["creation_time"])
            public_pem = str(entry["public_key"])
        except (ValueError, KeyError, TypeError):
            raise FailedPrecondition(
                f"{USER}: {path} at {self._vault.address} is not an asymmetric signing key (no public key)"
            ) from None
        return number, created, public_pem

    def _key(self, name: str, data: dict[str, Any]) -> PrivateKey:
        path = f"{self._mount}/keys/{name}"
        if data.get("exportable") or data.get("allow_plaintext_backup"):
            raise FailedPrecondition(
                f"{USER}: {path} at {self._vault.address} is exportable, so its private key could leave Vault; "
                "the CA uses only keys it created non-exportable — delete that key in Vault or change "
                "ca.key_manager.key_prefix"
            )
        version, _, public_pem = self._version_of(name, data)
        try:
            public = serialization.load_pem_public_key(public_pem.encode())
        except ValueError:
            raise FailedPrecondition(f"{USER}: the public key of {path} is not PEM") from None
        signer = TransitSigner(self._vault, self._mount, name, version)
        if isinstance(public, ec.EllipticCurvePublicKey):
            key: PrivateKey = TransitEcKey(signer, public)
        elif isinstance(public, rsa.RSAPublicKey):
            key = TransitRsaKey(signer, public)
        else:
            raise FailedPrecondition(f"{USER}: {path} is a {data.get('type')} key; the CA signs with EC or RSA keys")
        key_type_of(key)  # refuses curves and sizes the CA does not sign with
        return key


def _decode_signature(signature: str, version: int, path: str) -> bytes:
    """``vault:v<version>:<base64>`` → the signature bytes."""
    prefix, _, encoded = signature.partition(f"v{version}:")
    if prefix != "vault:":
        raise FailedPrecondition(f"{USER}: {path} answered a signature not made by key version {version}")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise FailedPrecondition(f"{USER}: {path} answered a signature that is not base64") from None


def _parse_time(text: object) -> datetime:
    """Vault's RFC 3339 times carry nanoseconds; Python reads at most microseconds."""
    if not isinstance(text, str):
        raise TypeError(text)
    moment = datetime.fromisoformat(_NANOSECONDS.sub(r"\1", text))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
