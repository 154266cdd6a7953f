"""The command line's parser: built for the named command alone, the same as in full."""

from __future__ import annotations

import argparse

import pytest
from drainpool import cli


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_is_built_when_none_is_named() -> None:
    for named in (None, "--help", "bogus"):
        assert list(commands(cli._parser(named))) == list(cli.COMMANDS), named


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_a_named_command_alone_parses_and_helps_as_in_the_full_parser(name: str) -> None:
    alone = commands(cli._parser(name))
    assert list(alone) == [name]
    assert alone[name].format_help() == commands(cli._parser(None))[name].format_help()
