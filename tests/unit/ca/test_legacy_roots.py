"""The CA's ``[bridge] legacy_roots`` files (ca/legacy_roots.py): refused at start-up when unusable,
re-read when replaced, the last good roots kept when a file breaks, and every Sync stream woken when
the roots change."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bridge.legacy_roots import legacy_roots_pem
from ca.legacy_roots import LegacyRootFiles
from ca.sync import ChangeHub
from spiffe_core.errors import ConfigError
from spiffe_core.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.enterprise_pki import EnterprisePki
from tests.support.files import replace_file

AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")


@pytest.fixture
def roots_file(tmp_path: Path, enterprise_pki: EnterprisePki) -> Path:
    path = tmp_path / "corp-roots.pem"
    path.write_bytes(enterprise_pki.root.read_bytes())
    return path


def loaded(roots_file: Path) -> LegacyRootFiles:
    files = LegacyRootFiles({"corp": roots_file}, ChangeHub(), check_interval=0.01)
    files.load()
    return files


def test_load_gives_each_set_as_canonical_pem(roots_file: Path) -> None:
    assert loaded(roots_file).get_roots() == {"corp": legacy_roots_pem(roots_file.read_bytes(), "root")}


def test_load_refuses_a_missing_file_naming_the_key(tmp_path: Path) -> None:
    files = LegacyRootFiles({"corp": tmp_path / "nowhere.pem"}, ChangeHub(), check_interval=1)

    with pytest.raises(ConfigError) as refused:
        files.load()

    assert str(refused.value) == (
        f"bridge.legacy_roots.corp: cannot read {tmp_path / 'nowhere.pem'} (No such file or directory); fix the file "
        "or the path"
    )


def test_load_refuses_a_host_certificate(tmp_path: Path, enterprise_pki: EnterprisePki) -> None:
    files = LegacyRootFiles({"corp": enterprise_pki.web.cert}, ChangeHub(), check_interval=1)

    with pytest.raises(ConfigError, match=r"^bridge\.legacy_roots\.corp: .* is not a CA certificate"):
        files.load()


def test_refresh_without_a_change_changes_nothing(roots_file: Path) -> None:
    files = loaded(roots_file)

    assert files.refresh() is False


def test_refresh_reads_a_replaced_file(roots_file: Path, enterprise_pki: EnterprisePki) -> None:
    files = loaded(roots_file)
    replace_file(roots_file, enterprise_pki.untrusted_root.read_bytes())

    assert files.refresh() is True
    assert files.get_roots() == {"corp": legacy_roots_pem(enterprise_pki.untrusted_root.read_bytes(), "root")}


def test_a_rewritten_file_with_the_same_roots_is_no_change(roots_file: Path, enterprise_pki: EnterprisePki) -> None:
    both = enterprise_pki.root.read_bytes() + enterprise_pki.untrusted_root.read_bytes()
    roots_file.write_bytes(both)
    files = loaded(roots_file)
    replace_file(
        roots_file, b"# reordered\n" + enterprise_pki.untrusted_root.read_bytes() + enterprise_pki.root.read_bytes()
    )

    assert files.refresh() is False


def test_a_broken_file_keeps_the_roots_read_before_and_is_logged_once(
    roots_file: Path, enterprise_pki: EnterprisePki, caplog: pytest.LogCaptureFixture
) -> None:
    files = loaded(roots_file)
    before = files.get_roots()
    replace_file(roots_file, enterprise_pki.web.cert.read_bytes())

    with caplog.at_level(logging.ERROR, logger="ca.legacy_roots"):
        assert (files.refresh(), files.refresh()) == (False, False)

    assert files.get_roots() == before
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["bridge.legacy_roots.corp"]
    assert "still serving the roots read before" in caplog.records[0].getMessage()


def test_a_removed_file_keeps_its_roots_until_it_is_back(
    roots_file: Path, enterprise_pki: EnterprisePki, caplog: pytest.LogCaptureFixture
) -> None:
    files = loaded(roots_file)
    before = files.get_roots()
    roots_file.unlink()

    with caplog.at_level(logging.ERROR, logger="ca.legacy_roots"):
        assert (files.refresh(), files.refresh()) == (False, False)
    assert files.get_roots() == before
    assert len(caplog.records) == 1

    roots_file.write_bytes(enterprise_pki.untrusted_root.read_bytes())
    assert files.refresh() is True


async def test_run_wakes_every_sync_stream_when_the_roots_change(
    roots_file: Path, enterprise_pki: EnterprisePki
) -> None:
    hub = ChangeHub()
    files = LegacyRootFiles({"corp": roots_file}, hub, check_interval=0.01)
    files.load()
    with hub.subscribe(AGENT) as stream:
        watching = asyncio.create_task(files.run())
        try:
            replace_file(roots_file, enterprise_pki.untrusted_root.read_bytes())
            await asyncio.wait_for(stream.wait(), 2.0)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)


def test_a_stale_crl_in_a_set_is_warned_of_once_until_the_set_changes(
    roots_file: Path, enterprise_pki: EnterprisePki, caplog: pytest.LogCaptureFixture
) -> None:
    """The CRL is fresh for a week (tests/support/enterprise_pki.py); the clock goes past that."""
    roots_file.write_bytes(enterprise_pki.root.read_bytes() + enterprise_pki.crl.read_bytes())
    clock = FakeClock(datetime.now(UTC))
    files = LegacyRootFiles({"corp": roots_file}, ChangeHub(), check_interval=1, clock=clock)
    with caplog.at_level(logging.WARNING, logger="ca.legacy_roots"):
        files.load()
        files.refresh()
        assert caplog.messages == []

        clock.advance(timedelta(days=8))
        files.refresh()
        files.refresh()
    assert caplog.messages == [
        "bridge.legacy_roots.corp: the CRL of CN=Example Corp Issuing CA 1 is past its next update; Envoy refuses "
        f"every server that CA issued until {roots_file} holds a fresh one"
    ]
