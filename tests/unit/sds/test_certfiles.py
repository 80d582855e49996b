"""Cert-file mode (sds/certfiles.py): which SVID a target gets, the files written and their modes, and
the reload command running once per change of that target only."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import stat
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sds.cache import CacheSnapshot, WorkloadCache, WorkloadSvid
from sds.certfiles import CertFileWriter, run_reload_command, select_svid
from sds.config import CertFileTarget
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa

TD = TrustDomain("example.org")
NOW = datetime.now(UTC)
CA = SigningCa.create(TD, NOW)
WEB = SpiffeId.parse("spiffe://example.org/web")
DB = SpiffeId.parse("spiffe://example.org/db")


def svid(spiffe_id: SpiffeId, uid: str = "1000") -> WorkloadSvid:
    issued = CA.issue(spiffe_id, not_before=NOW, not_after=NOW + timedelta(hours=1))
    return WorkloadSvid(
        entry_id=spiffe_id.path,
        spiffe_id=spiffe_id,
        cert_chain=issued.cert_chain,
        private_key=issued.private_key,
        selectors=frozenset({Selector("unix", f"uid:{uid}")}),
    )


def snapshot(*svids: WorkloadSvid, version: int = 1) -> CacheSnapshot:
    return CacheSnapshot(TD, CA.bundle(), svids=svids, version=version)


def appender(log_file: Path) -> str:
    """A reload command that appends one line to ``log_file`` per run."""
    code = "import sys; open(sys.argv[1], 'a').write('reloaded\\n')"
    return shlex.join([sys.executable, "-c", code, str(log_file)])


def target(directory: Path, spiffe_id: SpiffeId | None = WEB, command: str = "", **fields: object) -> CertFileTarget:
    return CertFileTarget.model_validate(
        {"dir": directory, "spiffe_id": spiffe_id, "reload_command": command, **fields}
    )


def runs(log_file: Path) -> int:
    return len(log_file.read_text().splitlines()) if log_file.exists() else 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"spiffe_id": DB}, DB, id="by-spiffe-id"),
        pytest.param({"spiffe_id": None, "selectors": ["unix:uid:2000"]}, DB, id="first-entitled-to-selectors"),
        pytest.param({"spiffe_id": WEB, "selectors": ["unix:uid:2000"]}, None, id="id-not-entitled-to-selectors"),
        pytest.param({"spiffe_id": SpiffeId.parse("spiffe://example.org/none")}, None, id="unknown-id"),
    ],
)
def test_selects_the_svid_a_target_names(tmp_path: Path, fields: dict[str, object], expected: SpiffeId | None) -> None:
    chosen = select_svid(target(tmp_path, **fields), snapshot(svid(WEB), svid(DB, uid="2000")))
    assert (chosen.spiffe_id if chosen else None) == expected


async def test_writes_chain_key_and_own_bundle_with_their_modes(tmp_path: Path) -> None:
    web = svid(WEB)
    await CertFileWriter(WorkloadCache(snapshot()), [target(tmp_path / "web")]).apply(snapshot(web))
    directory = tmp_path / "web"
    assert (directory / "svid.pem").read_bytes() == b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in web.cert_chain
    )
    key = serialization.load_pem_private_key((directory / "svid_key.pem").read_bytes(), password=None)
    assert key.public_key() == web.private_key.public_key()
    assert (directory / "bundle.pem").read_bytes() == CA.bundle().x509_authorities_pem()
    assert (mode(directory / "svid_key.pem"), mode(directory / "svid.pem"), mode(directory / "bundle.pem")) == (
        0o600,
        0o644,
        0o644,
    )


async def test_reload_command_runs_once_per_change_of_its_target_only(tmp_path: Path) -> None:
    web_log, db_log = tmp_path / "web.log", tmp_path / "db.log"
    writer = CertFileWriter(
        WorkloadCache(snapshot()),
        [target(tmp_path / "web", WEB, appender(web_log)), target(tmp_path / "db", DB, appender(db_log))],
    )
    web, db = svid(WEB), svid(DB)
    await writer.apply(snapshot(web, db, version=1))
    await writer.apply(snapshot(web, db, version=2))  # nothing changed for either
    await writer.apply(snapshot(svid(WEB), db, version=3))  # web rotated
    assert (runs(web_log), runs(db_log)) == (2, 1)


async def test_a_restart_that_finds_the_same_files_does_not_reload(tmp_path: Path) -> None:
    reload_log = tmp_path / "reload.log"
    web = svid(WEB)
    await CertFileWriter(WorkloadCache(snapshot()), [target(tmp_path / "web", WEB, appender(reload_log))]).apply(
        snapshot(web)
    )
    await CertFileWriter(WorkloadCache(snapshot()), [target(tmp_path / "web", WEB, appender(reload_log))]).apply(
        snapshot(web)
    )
    assert runs(reload_log) == 1


async def test_a_target_without_its_svid_keeps_its_directory_untouched(tmp_path: Path) -> None:
    await CertFileWriter(WorkloadCache(snapshot()), [target(tmp_path / "db", DB)]).apply(snapshot(svid(WEB)))
    assert not (tmp_path / "db").exists()


async def test_run_follows_the_cache(tmp_path: Path) -> None:
    cache = WorkloadCache(snapshot(svid(WEB)))
    writer = CertFileWriter(cache, [target(tmp_path / "web")])
    task = asyncio.create_task(writer.run())
    try:
        for _ in range(500):  # at most 5 s
            if (tmp_path / "web" / "svid.pem").exists():
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert (tmp_path / "web" / "svid.pem").exists()


async def test_a_reload_command_over_its_time_limit_is_killed(caplog: pytest.LogCaptureFixture) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    with caplog.at_level(logging.ERROR, logger="sds.certfiles"):
        assert await run_reload_command(argv, 0.2) is None
    assert caplog.messages == [f"reload command {sys.executable!r} did not finish within 0.2 s and was killed"]


async def test_a_missing_reload_command_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = str(tmp_path / "no-such-command")
    with caplog.at_level(logging.ERROR, logger="sds.certfiles"):
        assert await run_reload_command([missing], 1.0) is None
    assert caplog.messages == [f"reload command {missing!r} could not start: No such file or directory"]


async def test_reload_exit_status_is_returned() -> None:
    assert await run_reload_command([sys.executable, "-c", "raise SystemExit(3)"], 10.0) == 3


# --- writing safely as root into directories workloads control --------------------------------

NOBODY = 65534


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


async def test_files_belong_to_the_configured_owner_and_group_with_their_modes(tmp_path: Path) -> None:
    directory = tmp_path / "web"
    config = target(directory, owner=str(NOBODY), group=str(NOBODY), key_mode="0640", cert_mode=0o444)
    await CertFileWriter(WorkloadCache(snapshot()), [config]).apply(snapshot(svid(WEB)))
    assert owner_and_mode(directory / "svid_key.pem") == (NOBODY, NOBODY, 0o640)
    assert owner_and_mode(directory / "svid.pem") == (NOBODY, NOBODY, 0o444)
    assert owner_and_mode(directory / "bundle.pem") == (NOBODY, NOBODY, 0o444)
    assert owner_and_mode(directory)[2] == 0o755
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


def test_the_owner_reads_its_own_key() -> None:
    with tempfile.TemporaryDirectory(prefix="certfiles-", dir="/tmp") as root:  # tmp_path's parents are 0700
        Path(root).chmod(0o755)
        directory = Path(root) / "web"
        writer = CertFileWriter(WorkloadCache(snapshot()), [target(directory, owner=NOBODY)])
        asyncio.run(writer.apply(snapshot(svid(WEB))))
        read = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat", f"{directory}/svid_key.pem"],
            capture_output=True,
            check=False,
        )
    assert read.returncode == 0, read.stderr
    assert read.stdout.startswith(b"-----BEGIN PRIVATE KEY-----")


async def test_a_change_of_owner_rewrites_files_with_the_same_content(tmp_path: Path) -> None:
    directory, web = tmp_path / "web", snapshot(svid(WEB))
    await CertFileWriter(WorkloadCache(snapshot()), [target(directory)]).apply(web)
    await CertFileWriter(WorkloadCache(snapshot()), [target(directory, owner=NOBODY)]).apply(web)
    assert owner_and_mode(directory / "svid_key.pem")[0] == NOBODY


async def test_a_target_dir_swapped_for_a_symlink_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The workload owns the parent and replaces its cert directory with a link to a system directory
    (``decoy-etc`` stands for ``/etc``): nothing is written there."""
    (tmp_path / "decoy-etc").mkdir()
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "tls").symlink_to(tmp_path / "decoy-etc")
    with caplog.at_level(logging.ERROR):
        await CertFileWriter(WorkloadCache(snapshot()), [target(tmp_path / "app" / "tls")]).apply(snapshot(svid(WEB)))
    assert list((tmp_path / "decoy-etc").iterdir()) == []
    tls = tmp_path / "app" / "tls"
    assert (
        f"could not write the X509-SVID files in {tls}: cert_files dir {tls}: {tls} is a symlink or not a "
        "directory; cert files are never written through a symlink"
    ) in caplog.text


async def test_a_symlink_higher_up_the_path_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "decoy-etc" / "tls").mkdir(parents=True)
    (tmp_path / "app").symlink_to(tmp_path / "decoy-etc")
    await CertFileWriter(WorkloadCache(snapshot()), [target(tmp_path / "app" / "tls")]).apply(snapshot(svid(WEB)))
    assert list((tmp_path / "decoy-etc" / "tls").iterdir()) == []


async def test_symlinks_planted_in_place_of_the_files_are_replaced_not_followed(tmp_path: Path) -> None:
    directory = tmp_path / "web"
    directory.mkdir()
    decoy = tmp_path / "shadow"
    decoy.write_bytes(b"root:secret\n")
    for name in ("svid.pem", "svid_key.pem", "bundle.pem"):
        (directory / name).symlink_to(decoy)
    await CertFileWriter(WorkloadCache(snapshot()), [target(directory)]).apply(snapshot(svid(WEB)))
    assert decoy.read_bytes() == b"root:secret\n"
    for name in ("svid.pem", "svid_key.pem", "bundle.pem"):
        assert stat.S_ISREG((directory / name).lstat().st_mode)


@pytest.mark.parametrize(
    ("fields", "written"),
    [
        pytest.param({}, False, id="refused"),
        pytest.param({"owner": NOBODY}, True, id="owned-by-the-target-owner"),
        pytest.param({"allow_foreign_dir": True}, True, id="explicitly-allowed"),
    ],
)
async def test_a_directory_of_another_user_is_refused_unless_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fields: dict[str, object], written: bool
) -> None:
    directory = tmp_path / "web"
    directory.mkdir()
    os.chown(directory, NOBODY, NOBODY)
    with caplog.at_level(logging.ERROR):
        await CertFileWriter(WorkloadCache(snapshot()), [target(directory, **fields)]).apply(snapshot(svid(WEB)))
    assert (directory / "svid_key.pem").exists() is written
    if not written:
        assert (
            f"cert_files dir {directory} belongs to uid {NOBODY}, neither root, the agent nor the target's owner"
        ) in caplog.text
