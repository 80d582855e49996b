"""``trustmesh-ca`` as a command line (ca/cli.py, ca/cli_authorities.py): the version, and usage
errors that name what to type — never argparse's internal names for subcommand groups."""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Iterator

import pytest

from ca.cli import build_parser, main


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
