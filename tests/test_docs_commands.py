"""Every command line shown in the documentation parses with today's tools.

The README, BENCHMARKS.md, docs/*.md and the docstrings of the jobs and benchmarks show commands
(``densessl <command> ...``, ``python tools/<job>.py ...``, ``python benchmarks/<script>.py ...``)
in code blocks and inline code. Each is run here up to the point where its arguments have been read: the argument parser
of the tool, and for the training jobs also the YAML config with every ``key=value`` override,
validated against the config dataclasses. A renamed flag or config key that the docs still show
fails here, naming the file and line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from densessl.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    "README.md", "BENCHMARKS.md",
    *sorted(str(p.relative_to(REPO)) for pattern in ("docs/*.md", "densessl/tools/*.py", "benchmarks/*.py")
            for p in REPO.glob(pattern)),
]
TRAINING_JOBS = {"train_crw", "train_motion_vos"}
# study scripts pass their key=value overrides on to a training job: (config class, base YAML)
STUDY_OVERRIDES = {
    "study_crw_mini": ("densessl.tools.train_crw:CRWConfig", "configs/crw.yaml"),
    "study_cis_synthetic": ("densessl.tools.train_motion_vos:MotionVOSConfig", "configs/motion_vos.yaml"),
}

_START = re.compile(
    r"(?:[A-Z_]+=\S+\s+)*(?:(?:(?:\S*/)?python3?\s+)?(?:tools|benchmarks)/\w+\.py|densessl\s+[a-z][a-z-]*)")
_INLINE = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class DocCommand:
    where: str  # "README.md:123"
    text: str

    def __str__(self) -> str:
        return self.where


def _code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command text) of every documented command, continuation lines joined."""
    lines = text.splitlines()
    found: list[tuple[int, str]] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        start = index + 1
        if _START.match(line):
            while line.endswith("\\") and index + 1 < len(lines):
                index += 1
                line = line[:-1] + " " + lines[index].strip()
            found.append((start, line))
        else:
            for span in _INLINE.findall(lines[index]):
                if _START.match(span.strip()):
                    found.append((start, span.strip()))
        index += 1
    return found


def documented_commands() -> list[DocCommand]:
    commands = []
    for name in DOCUMENTS:
        for number, text in _code_lines((REPO / name).read_text()):
            commands.append(DocCommand(f"{name}:{number}", text))
    return commands


def _argv(text: str) -> tuple[str, str, list[str]]:
    """("tool" | "benchmark", module name, arguments) of one command line.

    Shell comments go, an optional part ``[--flag value]`` counts as given, other bracketed parts
    (``[overrides]``, ``[key=value ...]``, ``[--a | --b]``) and ``...`` are dropped.
    """
    text = text.split(" #", 1)[0]
    text = re.sub(r"(?<!\S)\[(--[^]|]+)\]", r"\1", text)  # [--a | --b] (alternatives) is left out
    text = re.sub(r"(?<!\S)\[[^]]*\]", "", text)
    tokens = [t for t in shlex.split(text) if t != "..."]
    while re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):
        tokens.pop(0)
    if tokens[0] == "densessl":
        assert tokens[1] in COMMANDS, f"`densessl {tokens[1]}` is not a command (known: {', '.join(COMMANDS)})"
        return "tool", COMMANDS[tokens[1]][0], tokens[2:]
    if "python" in Path(tokens[0]).name:
        tokens.pop(0)
    script = Path(tokens[0])
    return ("tool" if script.parent.name == "tools" else "benchmark"), script.stem, tokens[1:]


class _Parsed(Exception):
    def __init__(self, result: Any) -> None:
        super().__init__("parsed")
        self.result = result


def _load_benchmark(name: str, patch: pytest.MonkeyPatch) -> ModuleType:
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_doc_check_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    patch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    patch.syspath_prepend(str(REPO / "benchmarks"))
    spec.loader.exec_module(module)
    return module


def parse_documented(command: DocCommand, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the command's ``main`` until its arguments are read; returns the parsed namespace (or,
    for a training job, the loaded config). Raises ``SystemExit`` on a parser error."""
    kind, name, argv = _argv(command.text)

    def stop(result: Any, *args: Any, **kwargs: Any) -> None:
        raise _Parsed(result)

    with monkeypatch.context() as patch:
        module = importlib.import_module(f"densessl.tools.{name}") if kind == "tool" else _load_benchmark(name, patch)
        if name in TRAINING_JOBS:
            patch.setattr(module, "train", stop)
        else:
            for method in ("parse_args", "parse_intermixed_args"):
                original = getattr(argparse.ArgumentParser, method)

                def parse_then_stop(self: argparse.ArgumentParser, *args: Any, _original: Any = original,
                                    **kwargs: Any) -> None:
                    raise _Parsed(_original(self, *args, **kwargs))

                patch.setattr(argparse.ArgumentParser, method, parse_then_stop)
        patch.setattr(sys, "argv", [f"{name}.py", *argv])
        patch.chdir(REPO)
        try:
            code = module.main()
        except _Parsed as parsed:
            return parsed.result
    raise AssertionError(f"{command}: `{command.text}` ran to the end (exit {code}) without parsing its arguments "
                         "where this test looks for it")


COMMANDS_IN_DOCS = documented_commands()


def test_the_docs_show_commands_of_every_kind() -> None:
    kinds = {_argv(c.text)[:2] for c in COMMANDS_IN_DOCS}
    names = {name for _, name in kinds}
    assert len(COMMANDS_IN_DOCS) >= 40
    assert {"train_crw", "train_motion_vos", "eval_model", "eval_motion_vos", "compute_flow"} <= names
    assert any(kind == "benchmark" for kind, _ in kinds)


@pytest.mark.parametrize("command", COMMANDS_IN_DOCS, ids=str)
def test_documented_command_parses(command: DocCommand, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    kind, _, argv = _argv(command.text)
    if not argv and "python" not in command.text:
        return  # a mention of the command (a densessl command's name is checked by _argv)
    try:
        parsed = parse_documented(command, monkeypatch)
    except SystemExit as exit_:
        if exit_.code == 0 and "--help" in argv:
            return
        pytest.fail(f"{command}: `{command.text}` does not parse: {capsys.readouterr().err.strip()} "
                    f"(exit {exit_.code})")
    assert parsed is not None
    study = STUDY_OVERRIDES.get(_argv(command.text)[1])
    if study is not None:
        from densessl.engine.config import load_config

        module, _, name = study[0].partition(":")
        load_config(getattr(importlib.import_module(module), name), REPO / study[1], parsed.overrides)


def test_readme_command_table_matches_the_cli() -> None:
    """The README's table of commands names each command's script as ``densessl`` dispatches it."""
    rows = re.findall(r"^\| `densessl ([a-z-]+)` \| `tools/(\w+)\.py` \|", (REPO / "README.md").read_text(), re.M)
    assert {command: module for command, module in rows} == {c: m for c, (m, _) in COMMANDS.items()}
    for _, module in rows:
        assert (REPO / "tools" / f"{module}.py").is_file()


def test_a_renamed_flag_or_key_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself can fail: an unknown flag of a tool or a benchmark, and an unknown config
    key of a training job, are each reported."""
    with pytest.raises(SystemExit):
        parse_documented(DocCommand("x:1", "densessl eval-davis --no-such-flag 1"), monkeypatch)
    with pytest.raises(SystemExit):
        parse_documented(DocCommand("x:2", "python benchmarks/bench_crw.py --no-such-flag"), monkeypatch)
    with pytest.raises(AssertionError, match=r"exit 2"):
        parse_documented(DocCommand("x:3", "python tools/train_crw.py train.no_such_key=1"), monkeypatch)
