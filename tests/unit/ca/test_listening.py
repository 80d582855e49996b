"""The CA's TCP listeners: a port another process holds is refused with one line naming the key, and
gRPC's bare "failed to bind" is explained the same way (ca/listening.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ca.listening import bind_tcp, why_unbindable
from spiffe_core.errors import ConfigError

KEY = "server.node_api_address"


@pytest.fixture
def held() -> Iterator[str]:
    """An address another listener holds (without SO_REUSEPORT, as the CA binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_held_port_is_refused_as_in_use_naming_the_key(held: str) -> None:
    with pytest.raises(ConfigError) as refused:
        bind_tcp(held, KEY, keep=False)
    assert str(refused.value) == f"{KEY} {held} is in use; stop what listens there or set {KEY} to a free port"


def test_why_a_held_port_could_not_be_bound_is_that_it_is_in_use(held: str) -> None:
    assert why_unbindable(held, KEY) == f"{KEY} {held} is in use; stop what listens there or set {KEY} to a free port"


def test_why_an_address_of_another_host_could_not_be_bound_names_the_reason() -> None:
    reason = why_unbindable("192.0.2.1:8443", KEY)  # TEST-NET-1: never an address of this host
    assert reason.startswith(f"{KEY} 192.0.2.1:8443 cannot be bound (")
    assert reason.endswith(f"); set {KEY} to an address of this host")


def test_a_port_free_again_gets_the_general_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    assert why_unbindable(address, KEY) == f"{KEY} {address} could not be bound; set {KEY} to a free port"
