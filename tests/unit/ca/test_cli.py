"""``trustmesh-ca`` as a command line (ca/cli.py, ca/cli_authorities.py): the version, and usage
errors that name what to type — never argparse's internal names for subcommand groups."""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.admin_client import read_token_file
from ca.cli import build_parser, main
from spiffe_core.errors import InvalidArgument


def subcommand_groups(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The argv prefix of every command that needs a subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield path
            for name, sub in action.choices.items():
                yield from subcommand_groups(sub, (*path, name))


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"trustmesh-ca {importlib.metadata.version('trustmesh')}\n"


GROUPS = list(subcommand_groups(build_parser()))


def test_every_group_is_checked() -> None:
    assert {("entry",), ("token",), ("authority",), ("crl",), ("bundle",), ("x509",), ("jwt",)} <= set(GROUPS)


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: " ".join(p) or "top")
def test_a_missing_subcommand_is_named_by_its_choices(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(list(path))
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"{' '.join(('trustmesh-ca', *path))}: error: the following arguments are required: ")
    required = error.rsplit(": ", 1)[1]
    assert required == "COMMAND" if not path else required.startswith("{")
    assert required not in ("sub", "command", "what", "api")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        pytest.param(
            ["--token-file", "t", "entry", "list"],
            "--token-file given without --server; these options are for a remote CA over HTTPS (without --server "
            "the CLI uses the local admin socket)",
            id="remote-flag-without-server",
        ),
        pytest.param(
            ["--server", "http://ca.example.org:8443", "entry", "list"],
            "--server 'http://ca.example.org:8443' is not https://host:port; the admin API is served over HTTPS only "
            "(a token must never travel in clear)",
            id="server-in-clear",
        ),
        pytest.param(
            ["--server", "https://ca.example.org:8443", "--cert", "svid.pem", "entry", "list"],
            "--cert and --key go together: the admin X509-SVID and its private key",
            id="cert-without-key",
        ),
        pytest.param(
            ["--server", "https://ca.example.org:8443", "--socket", "/run/admin.sock", "entry", "list"],
            "--socket and --server name two CAs; give one",
            id="socket-and-server",
        ),
    ],
)
def test_remote_options_that_cannot_work_are_refused_before_anything_is_sent(
    args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 1
    assert capsys.readouterr().err == f"trustmesh-ca: error: {problem}\n"


def test_a_token_file_holding_more_than_one_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first.token.x second.token.y\n")

    with pytest.raises(InvalidArgument, match="does not hold exactly one token"):
        read_token_file(path)


def test_a_token_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("aaa.bbb.ccc\n")

    assert read_token_file(path) == "aaa.bbb.ccc"
