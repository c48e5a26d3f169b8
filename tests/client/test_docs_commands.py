"""The `instahide ...` command lines in README.md and docs/ name only commands and flags the CLI has."""

from __future__ import annotations

import argparse
import pathlib
import re

import pytest
from instahide_client.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_COMMAND = re.compile(r"^[ \t]*(instahide(?:-server)? [^#\n]*)", re.MULTILINE)


def _shell_lines(text: str) -> list[str]:
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        joined = block.replace("\\\n", " ")
        lines += [m.group(1).strip() for m in _COMMAND.finditer(joined) if m.group(1).startswith("instahide ")]
    return lines


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The deepest subcommand parser the leading words name, and the words left."""
    while words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or words[0] not in actions[0].choices:
            break
        parser, words = actions[0].choices[words[0]], words[1:]
    return parser, words


CASES = [(path.name, line) for path in DOCS for line in _shell_lines(path.read_text())]


def test_the_docs_show_commands():
    assert len(CASES) >= 10 and any("keys create" in line for _, line in CASES)


@pytest.mark.parametrize("doc, line", CASES, ids=[f"{d}:{line[:40]}" for d, line in CASES])
def test_every_flag_of_a_documented_command_exists(doc, line):
    words = line.split()[1:]
    first = words[0].split("|")[0]
    parser, rest = _subparser(build_parser(), [first, *words[1:]])
    assert parser.prog != "instahide", f"{doc}: unknown command in {line!r}"
    if rest and "|" in rest[0]:  # "watch|get|cancel" names several actions
        for action in rest[0].split("|"):
            assert _subparser(parser, [action])[0] is not parser, f"{doc}: unknown action {action!r} in {line!r}"
        return
    known = {option for action in parser._actions for option in action.option_strings}
    for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(rest)):
        assert flag in known, f"{doc}: {parser.prog} has no {flag} (in {line!r})"
