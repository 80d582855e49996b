"""SPIFFE IDs and trust domain names (SPIFFE-ID.md §2; DESIGN §2): every rule, accepted and refused."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spiffe_core.errors import SpiffeIdError
from spiffe_core.spiffe_id import MAX_SPIFFE_ID_BYTES, MAX_TRUST_DOMAIN_BYTES, SpiffeId, TrustDomain

TD_CHARS = string.ascii_lowercase + string.digits + ".-_"
PATH_CHARS = string.ascii_letters + string.digits + ".-_"
EXAMPLE = TrustDomain("example.org")


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# --- scheme ----------------------------------------------------------------------------------------------


def test_parses_an_id_with_a_trust_domain_and_a_path() -> None:
    spiffe_id = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
    assert (spiffe_id.trust_domain, spiffe_id.path) == (EXAMPLE, "/ns/prod/sa/web")


def test_rejects_an_id_without_a_scheme() -> None:
    with pytest.raises(SpiffeIdError, match=exact("'example.org/web' does not start with 'spiffe://'")):
        SpiffeId.parse("example.org/web")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("https://example.org/web", id="https"),
        pytest.param("spiffe:/example.org/web", id="one-slash"),
        pytest.param("spiffe:example.org/web", id="no-slashes"),
        pytest.param(" spiffe://example.org/web", id="leading-space"),
    ],
)
def test_rejects_an_id_with_another_scheme(text: str) -> None:
    with pytest.raises(SpiffeIdError, match=exact(f"{text!r} does not start with 'spiffe://'")):
        SpiffeId.parse(text)


@pytest.mark.parametrize("scheme", ["SPIFFE", "Spiffe", "spiFFe"])
def test_rejects_an_uppercase_scheme(scheme: str) -> None:
    text = f"{scheme}://example.org/web"
    with pytest.raises(SpiffeIdError, match=exact(f"{text!r} has an uppercase scheme; write 'spiffe://'")):
        SpiffeId.parse(text)


def test_rejects_an_empty_id() -> None:
    with pytest.raises(SpiffeIdError, match=exact("SPIFFE ID is empty")):
        SpiffeId.parse("")


def test_rejects_a_non_string_id() -> None:
    with pytest.raises(SpiffeIdError, match=exact("a SPIFFE ID must be a string, not bytes")):
        SpiffeId.parse(b"spiffe://example.org/web")  # type: ignore[arg-type]


# --- trust domain (SPIFFE-ID.md §2.1) --------------------------------------------------------------------


def trust_domain_refusal(ch: str) -> str:
    """What the parser must say about ``ch`` inside the trust domain name 'ex<ch>ample.org'."""
    name = f"ex{ch}ample.org"
    if ch == "@":
        return f"trust domain {name!r} has user info; SPIFFE IDs never carry one"
    if ch == ":":
        return f"trust domain {name!r} has a port; SPIFFE IDs never carry one"
    if ch == "%":
        return f"trust domain {name!r} is percent-encoded; SPIFFE IDs never are"
    if ch in string.ascii_uppercase:
        return f"trust domain {name!r} has uppercase letters; trust domains are lowercase — use {name.lower()!r}"
    return f"trust domain {name!r} has the character {ch!r}; only a-z, 0-9, '.', '-' and '_' are allowed"


@pytest.mark.parametrize("code", [pytest.param(code, id=f"0x{code:02x}") for code in range(256)])
def test_trust_domain_accepts_only_lowercase_letters_digits_dot_dash_underscore(code: int) -> None:
    ch = chr(code)
    name = f"ex{ch}ample.org"
    if ch in TD_CHARS:
        assert TrustDomain.parse(name).name == name
    elif ch == "/":
        with pytest.raises(SpiffeIdError, match=re.escape(f"trust domain {name!r} has a '/'; write only the name")):
            TrustDomain.parse(name)
    else:
        with pytest.raises(SpiffeIdError, match=exact(trust_domain_refusal(ch))):
            TrustDomain.parse(name)


@pytest.mark.parametrize(
    "code", [pytest.param(code, id=f"0x{code:02x}") for code in range(256) if chr(code) not in "/?#"]
)
def test_spiffe_id_trust_domain_accepts_only_lowercase_letters_digits_dot_dash_underscore(code: int) -> None:
    ch = chr(code)
    text = f"spiffe://ex{ch}ample.org/web"
    if ch in TD_CHARS:
        assert str(SpiffeId.parse(text)) == text
    else:
        with pytest.raises(SpiffeIdError, match=exact(trust_domain_refusal(ch))):
            SpiffeId.parse(text)


def test_rejects_an_uppercase_trust_domain_and_names_the_fix() -> None:
    with pytest.raises(
        SpiffeIdError,
        match=exact(
            "trust domain 'Prod.Example' has uppercase letters; trust domains are lowercase — use 'prod.example'"
        ),
    ):
        SpiffeId.parse("spiffe://Prod.Example/web")


@pytest.mark.parametrize("text", ["spiffe://", "spiffe:///web"])
def test_rejects_an_empty_trust_domain(text: str) -> None:
    with pytest.raises(
        SpiffeIdError, match=exact(f"{text!r} has an empty trust domain; write e.g. 'spiffe://example.org/...'")
    ):
        SpiffeId.parse(text)


def test_rejects_a_trust_domain_with_a_port() -> None:
    with pytest.raises(
        SpiffeIdError, match=exact("trust domain 'example.org:8443' has a port; SPIFFE IDs never carry one")
    ):
        SpiffeId.parse("spiffe://example.org:8443/web")


def test_rejects_a_trust_domain_with_an_empty_port() -> None:
    with pytest.raises(SpiffeIdError, match=re.escape("trust domain 'example.org:' has a port")):
        SpiffeId.parse("spiffe://example.org:/web")


@pytest.mark.parametrize("userinfo", ["user", "user:secret"])
def test_rejects_a_trust_domain_with_user_info(userinfo: str) -> None:
    name = f"{userinfo}@example.org"
    with pytest.raises(SpiffeIdError, match=exact(f"trust domain {name!r} has user info; SPIFFE IDs never carry one")):
        SpiffeId.parse(f"spiffe://{name}/web")


def test_rejects_a_percent_encoded_trust_domain() -> None:
    with pytest.raises(
        SpiffeIdError, match=exact("trust domain 'exa%6Dple.org' is percent-encoded; SPIFFE IDs never are")
    ):
        SpiffeId.parse("spiffe://exa%6Dple.org/web")


def test_accepts_a_trust_domain_of_255_bytes() -> None:
    name = "a" * MAX_TRUST_DOMAIN_BYTES
    assert SpiffeId.parse(f"spiffe://{name}/web").trust_domain.name == name


def test_rejects_a_trust_domain_of_256_bytes() -> None:
    text = f"spiffe://{'a' * 256}/web"
    with pytest.raises(SpiffeIdError, match=exact(f"trust domain of {text!r} is 256 bytes; at most 255 allowed")):
        SpiffeId.parse(text)


def test_trust_domain_parse_accepts_a_bare_name() -> None:
    assert TrustDomain.parse("example.org") == EXAMPLE


def test_trust_domain_parse_accepts_a_trust_domain_id() -> None:
    assert TrustDomain.parse("spiffe://example.org") == EXAMPLE


def test_trust_domain_parse_rejects_an_id_with_a_path() -> None:
    with pytest.raises(
        SpiffeIdError, match=exact("'spiffe://example.org/web' has a path; a trust domain is written without one")
    ):
        TrustDomain.parse("spiffe://example.org/web")


def test_trust_domain_parse_rejects_an_empty_name() -> None:
    with pytest.raises(SpiffeIdError, match=re.escape("'' has an empty trust domain")):
        TrustDomain.parse("")


def test_trust_domain_parse_rejects_a_non_string() -> None:
    with pytest.raises(SpiffeIdError, match=exact("a trust domain must be a string, not NoneType")):
        TrustDomain.parse(None)  # type: ignore[arg-type]


def test_trust_domain_constructor_validates_the_name() -> None:
    with pytest.raises(SpiffeIdError, match=re.escape("trust domain 'Example.org' has uppercase letters")):
        TrustDomain("Example.org")


def test_trust_domain_id_is_the_pathless_spiffe_id() -> None:
    assert (str(EXAMPLE.id), EXAMPLE.id.is_trust_domain_id) == ("spiffe://example.org", True)


# --- path (SPIFFE-ID.md §2.2) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", [pytest.param(code, id=f"0x{code:02x}") for code in range(256) if chr(code) not in "/?#"]
)
def test_path_segments_accept_only_letters_digits_dot_dash_underscore(code: int) -> None:
    ch = chr(code)
    text = f"spiffe://example.org/ns/we{ch}b"
    if ch in PATH_CHARS:
        assert SpiffeId.parse(text).path == f"/ns/we{ch}b"
    elif ch == "%":
        with pytest.raises(SpiffeIdError, match=exact(f"{text!r} is percent-encoded; SPIFFE ID paths never are")):
            SpiffeId.parse(text)
    else:
        with pytest.raises(
            SpiffeIdError,
            match=exact(
                f"path segment {'we' + ch + 'b'!r} of {text!r} has the character {ch!r}; "
                "only letters, digits, '.', '-' and '_' are allowed"
            ),
        ):
            SpiffeId.parse(text)


def test_accepts_an_id_without_a_path() -> None:
    assert SpiffeId.parse("spiffe://example.org").is_trust_domain_id


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("spiffe://example.org//web", id="leading"),
        pytest.param("spiffe://example.org/ns//web", id="middle"),
    ],
)
def test_rejects_an_empty_path_segment(text: str) -> None:
    with pytest.raises(SpiffeIdError, match=exact(f"{text!r} has an empty path segment ('//')")):
        SpiffeId.parse(text)


@pytest.mark.parametrize(
    ("text", "segment"),
    [
        pytest.param("spiffe://example.org/.", ".", id="dot"),
        pytest.param("spiffe://example.org/..", "..", id="dot-dot"),
        pytest.param("spiffe://example.org/ns/./web", ".", id="inner-dot"),
        pytest.param("spiffe://example.org/ns/../admin", "..", id="inner-dot-dot"),
    ],
)
def test_rejects_dot_segments(text: str, segment: str) -> None:
    with pytest.raises(
        SpiffeIdError, match=exact(f"{text!r} has a {segment!r} path segment; dot segments are not allowed")
    ):
        SpiffeId.parse(text)


@pytest.mark.parametrize("segment", ["...", ".web", "web.", "..web"])
def test_accepts_segments_that_merely_contain_dots(segment: str) -> None:
    assert SpiffeId.parse(f"spiffe://example.org/{segment}").path == f"/{segment}"


@pytest.mark.parametrize("text", ["spiffe://example.org/", "spiffe://example.org/ns/web/"])
def test_rejects_a_trailing_slash(text: str) -> None:
    with pytest.raises(SpiffeIdError, match=exact(f"{text!r} ends with '/'; SPIFFE ID paths have no trailing slash")):
        SpiffeId.parse(text)


@pytest.mark.parametrize(
    "text", ["spiffe://example.org/web?x=1", "spiffe://example.org?x=1", "spiffe://example.org/web?"]
)
def test_rejects_a_query(text: str) -> None:
    with pytest.raises(SpiffeIdError, match=exact(f"{text!r} has a query; SPIFFE IDs have neither query nor fragment")):
        SpiffeId.parse(text)


@pytest.mark.parametrize(
    "text", ["spiffe://example.org/web#main", "spiffe://example.org#main", "spiffe://example.org/web#"]
)
def test_rejects_a_fragment(text: str) -> None:
    with pytest.raises(
        SpiffeIdError, match=exact(f"{text!r} has a fragment; SPIFFE IDs have neither query nor fragment")
    ):
        SpiffeId.parse(text)


def test_rejects_a_percent_encoded_path() -> None:
    with pytest.raises(
        SpiffeIdError, match=exact("'spiffe://example.org/we%62' is percent-encoded; SPIFFE ID paths never are")
    ):
        SpiffeId.parse("spiffe://example.org/we%62")


# --- length (SPIFFE-ID.md §2.3) --------------------------------------------------------------------------


def id_of_length(size: int) -> str:
    prefix = "spiffe://example.org/"
    return prefix + "a" * (size - len(prefix))


def test_accepts_an_id_of_2048_bytes() -> None:
    text = id_of_length(MAX_SPIFFE_ID_BYTES)
    assert str(SpiffeId.parse(text)) == text


def test_rejects_an_id_of_2049_bytes() -> None:
    with pytest.raises(SpiffeIdError, match=exact("SPIFFE ID is 2049 bytes; at most 2048 allowed")):
        SpiffeId.parse(id_of_length(MAX_SPIFFE_ID_BYTES + 1))


def test_constructor_rejects_an_id_of_2049_bytes() -> None:
    with pytest.raises(SpiffeIdError, match=exact("SPIFFE ID is 2049 bytes; at most 2048 allowed")):
        SpiffeId(EXAMPLE, "/" + "a" * (MAX_SPIFFE_ID_BYTES + 1 - len("spiffe://example.org/")))


# --- building from segments ------------------------------------------------------------------------------


def test_from_segments_joins_segments_under_the_trust_domain() -> None:
    assert str(SpiffeId.from_segments(EXAMPLE, "ns", "prod", "sa", "web")) == "spiffe://example.org/ns/prod/sa/web"


def test_from_segments_without_segments_is_the_trust_domain_id() -> None:
    assert SpiffeId.from_segments(EXAMPLE) == EXAMPLE.id


def test_from_segments_rejects_a_segment_holding_a_slash() -> None:
    with pytest.raises(SpiffeIdError, match=exact("path segment 'ns/prod' holds a '/'; pass each segment separately")):
        SpiffeId.from_segments(EXAMPLE, "ns/prod")


def test_from_segments_rejects_an_empty_segment() -> None:
    with pytest.raises(
        SpiffeIdError,
        match=exact("an empty path segment was passed for spiffe://example.org; every segment needs a name"),
    ):
        SpiffeId.from_segments(EXAMPLE, "ns", "")


def test_from_segments_rejects_a_dot_dot_segment() -> None:
    with pytest.raises(SpiffeIdError, match=re.escape("has a '..' path segment; dot segments are not allowed")):
        SpiffeId.from_segments(EXAMPLE, "ns", "..")


def test_from_segments_rejects_a_disallowed_character() -> None:
    with pytest.raises(SpiffeIdError, match=re.escape("path segment 'web server' of")):
        SpiffeId.from_segments(EXAMPLE, "web server")


# --- values ----------------------------------------------------------------------------------------------

trust_domain_names = st.text(alphabet=TD_CHARS, min_size=1, max_size=40)
segments = st.text(alphabet=PATH_CHARS, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))


@given(name=trust_domain_names, path=st.lists(segments, max_size=6))
def test_parse_of_str_round_trips(name: str, path: list[str]) -> None:
    spiffe_id = SpiffeId.from_segments(TrustDomain(name), *path)
    text = str(spiffe_id)
    assert text == f"spiffe://{name}" + "".join("/" + s for s in path)
    assert SpiffeId.parse(text) == spiffe_id


@given(name=trust_domain_names)
def test_trust_domain_parse_of_its_id_round_trips(name: str) -> None:
    assert TrustDomain.parse(str(TrustDomain(name).id)) == TrustDomain(name)


def test_equal_ids_are_equal_and_hash_alike() -> None:
    first, second = SpiffeId.parse("spiffe://example.org/web"), SpiffeId.parse("spiffe://example.org/web")
    assert (first == second, hash(first) == hash(second)) == (True, True)


def test_an_id_never_equals_its_string() -> None:
    text: object = "spiffe://example.org/web"
    assert SpiffeId.parse("spiffe://example.org/web") != text


def test_a_trust_domain_never_equals_its_name() -> None:
    trust_domain = TrustDomain("example.org")
    name: object = "example.org"
    assert trust_domain != name


def test_a_trust_domain_never_equals_its_id() -> None:
    trust_domain = TrustDomain("example.org")
    trust_domain_id: object = trust_domain.id
    assert trust_domain != trust_domain_id


def test_paths_are_case_sensitive() -> None:
    assert SpiffeId.parse("spiffe://example.org/Web") != SpiffeId.parse("spiffe://example.org/web")


def test_membership_is_by_trust_domain() -> None:
    spiffe_id = SpiffeId.parse("spiffe://example.org/web")
    assert (spiffe_id.is_member_of(EXAMPLE), spiffe_id.is_member_of(TrustDomain("example.com"))) == (True, False)


def test_ids_are_immutable() -> None:
    spiffe_id = SpiffeId.parse("spiffe://example.org/web")
    with pytest.raises(AttributeError):
        spiffe_id.path = "/admin"  # type: ignore[misc]
