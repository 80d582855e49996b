"""Join token repository on SQLite and PostgreSQL (DESIGN §3 "Node attestation": ``join_token``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from ca.store import Database, JoinToken, JoinTokenRepository, hash_join_token
from spiffe_core.errors import AlreadyExists, InvalidArgument, NotAuthorized
from tests.support.store import AGENT_ID, NOW

TOKEN = "6f1c0d3e-join-token"
TOKEN_HASH = hash_join_token(TOKEN)
EXPIRES = NOW + timedelta(minutes=10)
REFUSED = "join token unknown, used or expired; ask an operator for a new join token"


@pytest.fixture
def issued(database: Database) -> Database:
    with database.transaction() as session:
        JoinTokenRepository(session).add(TOKEN_HASH, EXPIRES, NOW)
    return database


def test_stores_only_the_hash_of_the_token(issued: Database) -> None:
    with issued.transaction() as session:
        stored = session.execute(text("SELECT token_hash FROM join_tokens")).scalars().all()
    assert stored == [TOKEN_HASH]
    assert TOKEN not in repr(JoinToken(TOKEN_HASH, EXPIRES, NOW))


def test_consuming_marks_the_token_used_by_the_agent(issued: Database) -> None:
    at = NOW + timedelta(minutes=1)
    with issued.transaction() as session:
        used = JoinTokenRepository(session).consume(TOKEN_HASH, at, AGENT_ID)
    assert used == JoinToken(TOKEN_HASH, EXPIRES, NOW, used_at=at, agent_spiffe_id=AGENT_ID)


def test_a_token_is_consumed_only_once(issued: Database) -> None:
    with issued.transaction() as session:
        JoinTokenRepository(session).consume(TOKEN_HASH, NOW, AGENT_ID)
    with pytest.raises(NotAuthorized) as raised, issued.transaction() as session:
        JoinTokenRepository(session).consume(TOKEN_HASH, NOW, AGENT_ID)
    assert str(raised.value) == REFUSED


@pytest.mark.parametrize(
    ("token_hash", "at"),
    [
        pytest.param(TOKEN_HASH, EXPIRES, id="expired-at-its-expiry"),
        pytest.param(TOKEN_HASH, EXPIRES + timedelta(days=1), id="expired-long-ago"),
        pytest.param(hash_join_token("never-issued"), NOW, id="unknown"),
    ],
)
def test_refuses_unknown_or_expired_tokens_with_one_message(issued: Database, token_hash: str, at: object) -> None:
    with pytest.raises(NotAuthorized) as raised, issued.transaction() as session:
        JoinTokenRepository(session).consume(token_hash, at, AGENT_ID)  # type: ignore[arg-type]
    assert str(raised.value) == REFUSED


def test_refuses_a_plain_token_where_its_hash_belongs(issued: Database) -> None:
    with pytest.raises(InvalidArgument) as raised, issued.transaction() as session:
        JoinTokenRepository(session).consume(TOKEN, NOW, AGENT_ID)
    assert str(raised.value) == (
        "join token hash is not 64 lowercase hex digits; pass hash_join_token(token), never the token"
    )


def test_refuses_to_store_the_same_token_twice(issued: Database) -> None:
    with pytest.raises(AlreadyExists) as raised, issued.transaction() as session:
        JoinTokenRepository(session).add(TOKEN_HASH, EXPIRES, NOW)
    assert str(raised.value) == "this join token exists already; generate a new random token"


def test_purges_expired_tokens_only(issued: Database) -> None:
    later_hash = hash_join_token("later")
    with issued.transaction() as session:
        JoinTokenRepository(session).add(later_hash, EXPIRES + timedelta(hours=1), NOW)
    with issued.transaction() as session:
        assert JoinTokenRepository(session).purge_expired(EXPIRES) == 1
    with issued.transaction() as session:
        repository = JoinTokenRepository(session)
        assert repository.consume(later_hash, EXPIRES, AGENT_ID).used_at == EXPIRES
        with pytest.raises(NotAuthorized):
            repository.consume(TOKEN_HASH, NOW, AGENT_ID)
