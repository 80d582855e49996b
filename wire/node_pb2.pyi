from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttestRequest(_message.Message):
    __slots__ = ("method", "payload", "csr", "trust_domain")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    method: str
    payload: bytes
    csr: bytes
    trust_domain: str
    def __init__(self, method: _Optional[str] = ..., payload: _Optional[bytes] = ..., csr: _Optional[bytes] = ..., trust_domain: _Optional[str] = ...) -> None: ...

class AttestResponse(_message.Message):
    __slots__ = ("spiffe_id", "svid_chain", "bundle")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SVID_CHAIN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    svid_chain: _containers.RepeatedScalarFieldContainer[bytes]
    bundle: bytes
    def __init__(self, spiffe_id: _Optional[str] = ..., svid_chain: _Optional[_Iterable[bytes]] = ..., bundle: _Optional[bytes] = ...) -> None: ...

class AttestChallengeRequest(_message.Message):
    __slots__ = ("method", "payload", "trust_domain")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    method: str
    payload: bytes
    trust_domain: str
    def __init__(self, method: _Optional[str] = ..., payload: _Optional[bytes] = ..., trust_domain: _Optional[str] = ...) -> None: ...

class AttestChallengeResponse(_message.Message):
    __slots__ = ("challenge",)
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    challenge: bytes
    def __init__(self, challenge: _Optional[bytes] = ...) -> None: ...

class RenewAgentRequest(_message.Message):
    __slots__ = ("csr",)
    CSR_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    def __init__(self, csr: _Optional[bytes] = ...) -> None: ...

class RenewAgentResponse(_message.Message):
    __slots__ = ("svid_chain",)
    SVID_CHAIN_FIELD_NUMBER: _ClassVar[int]
    svid_chain: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, svid_chain: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegistrationEntry(_message.Message):
    __slots__ = ("id", "spiffe_id", "parent_id", "selectors", "dns_names", "x509_svid_ttl_seconds", "jwt_svid_ttl_seconds", "federates_with", "admin", "hint", "revision")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    X509_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JWT_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FEDERATES_WITH_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    id: str
    spiffe_id: str
    parent_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    x509_svid_ttl_seconds: int
    jwt_svid_ttl_seconds: int
    federates_with: _containers.RepeatedScalarFieldContainer[str]
    admin: bool
    hint: str
    revision: int
    def __init__(self, id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., dns_names: _Optional[_Iterable[str]] = ..., x509_svid_ttl_seconds: _Optional[int] = ..., jwt_svid_ttl_seconds: _Optional[int] = ..., federates_with: _Optional[_Iterable[str]] = ..., admin: _Optional[bool] = ..., hint: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class SyncUpdate(_message.Message):
    __slots__ = ("version", "bundle", "federated_bundles", "entries", "tainted_authority_ids", "revoked_serials", "crls", "legacy_roots")
    class FederatedBundlesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class LegacyRootsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_BUNDLES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TAINTED_AUTHORITY_IDS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_SERIALS_FIELD_NUMBER: _ClassVar[int]
    CRLS_FIELD_NUMBER: _ClassVar[int]
    LEGACY_ROOTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    bundle: bytes
    federated_bundles: _containers.ScalarMap[str, bytes]
    entries: _containers.RepeatedCompositeFieldContainer[RegistrationEntry]
    tainted_authority_ids: _containers.RepeatedScalarFieldContainer[str]
    revoked_serials: _containers.RepeatedScalarFieldContainer[str]
    crls: _containers.RepeatedScalarFieldContainer[bytes]
    legacy_roots: _containers.ScalarMap[str, bytes]
    def __init__(self, version: _Optional[int] = ..., bundle: _Optional[bytes] = ..., federated_bundles: _Optional[_Mapping[str, bytes]] = ..., entries: _Optional[_Iterable[_Union[RegistrationEntry, _Mapping]]] = ..., tainted_authority_ids: _Optional[_Iterable[str]] = ..., revoked_serials: _Optional[_Iterable[str]] = ..., crls: _Optional[_Iterable[bytes]] = ..., legacy_roots: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class X509SvidRequest(_message.Message):
    __slots__ = ("entry_id", "csr")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    csr: bytes
    def __init__(self, entry_id: _Optional[str] = ..., csr: _Optional[bytes] = ...) -> None: ...

class SignX509SvidsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[X509SvidRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[X509SvidRequest, _Mapping]]] = ...) -> None: ...

class SignedX509Svid(_message.Message):
    __slots__ = ("entry_id", "cert_chain", "error")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    cert_chain: _containers.RepeatedScalarFieldContainer[bytes]
    error: str
    def __init__(self, entry_id: _Optional[str] = ..., cert_chain: _Optional[_Iterable[bytes]] = ..., error: _Optional[str] = ...) -> None: ...

class SignX509SvidsResponse(_message.Message):
    __slots__ = ("svids",)
    SVIDS_FIELD_NUMBER: _ClassVar[int]
    svids: _containers.RepeatedCompositeFieldContainer[SignedX509Svid]
    def __init__(self, svids: _Optional[_Iterable[_Union[SignedX509Svid, _Mapping]]] = ...) -> None: ...

class MintJwtSvidRequest(_message.Message):
    __slots__ = ("entry_id", "audience")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    audience: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entry_id: _Optional[str] = ..., audience: _Optional[_Iterable[str]] = ...) -> None: ...

class MintJwtSvidResponse(_message.Message):
    __slots__ = ("token", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: int
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class RefreshFederatedBundleRequest(_message.Message):
    __slots__ = ("trust_domain", "key_id")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    key_id: str
    def __init__(self, trust_domain: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class RefreshFederatedBundleResponse(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: bytes
    def __init__(self, bundle: _Optional[bytes] = ...) -> None: ...
