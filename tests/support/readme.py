"""The README's fenced code blocks, and a terminal session that runs them as a reader would.

Parsing. Every fence carries a language tag: ``bash``/``sh``/``shell``, ``console`` (``$ ``
lines are commands, the lines under one are its stated output) and ``python`` are examples to
run; ``text`` and ``yaml`` are diagrams and file contents, never run. An untagged fence or an
unknown tag is an error, so an example cannot slip in unrun. A block that cannot run in a test
(it installs, needs docker or a GPU, runs for minutes) carries the marker

    <!-- readme-test: skip (why) -->

on the line right above its fence; a marker anywhere else is an error.

Running. :func:`session_script` turns the runnable blocks into one bash script, in README
order, so that what one block does (``source .venv/bin/activate``, a file it writes, a server
change it makes) holds for the next, as in one terminal: shell blocks as written, each console
command as written, each Python block fed to ``python -`` (the ``python`` the session finds,
the venv's once the README has activated it). ``set -eo pipefail``: the first command that
fails ends the session, as it stops a reader. :func:`run_session` runs it and
:func:`problems` says, per block, what a reader would have hit: a non-zero exit status, a
traceback in the output (even with status 0), stated output that differs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

SHELL = frozenset({"bash", "sh", "shell"})
RUN = SHELL | {"console", "python"}
NOT_RUN = frozenset({"text", "yaml"})
SKIP_MARKER = re.compile(r"<!-- readme-test: skip \((?P<why>.+)\) -->")
_FENCE = re.compile(r"(?P<indent> *)```(?P<language>\S*)\s*$")
_MARK = "@@sluice-readme-session@@"
_MARK_LINE = re.compile(rf"{_MARK} (?P<what>start|end|command) (?P<index>\d+)(?: (?P<sub>\d+))?")
TRACEBACK = "Traceback (most recent call last)"


class ReadmeFormatError(ValueError):
    """The README breaks a rule of the module docstring; the message names the line."""


@dataclass(frozen=True)
class Command:
    """One ``$ `` command of a console block and the output the README states for it."""

    text: str
    output: str


@dataclass(frozen=True)
class Block:
    """A fenced block: ``line`` is the 1-based line of its opening fence, ``section`` the
    heading it stands under, ``skip`` the reason of a skip marker above it (None: none)."""

    line: int
    language: str
    text: str
    section: str
    skip: str | None = None

    @property
    def runs(self) -> bool:
        """An example the session runs: a runnable language and no skip marker."""
        return self.language in RUN and self.skip is None

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.language}, section {self.section!r})"

    def commands(self) -> list[Command]:
        """A console block's commands with their stated output (continuation lines ending in
        a backslash belong to the command)."""
        assert self.language == "console", self.where
        commands: list[Command] = []
        command: list[str] = []
        output: list[str] = []
        continued = False
        for offset, line in enumerate(self.text.splitlines(), start=1):
            if continued or line.startswith("$ "):
                if not continued:
                    if command:
                        commands.append(Command("\n".join(command), _output(output)))
                    command, output = [], []
                command.append(line if continued else line[2:])
                continued = line.endswith("\\")
            elif not command:
                raise ReadmeFormatError(f"README.md:{self.line + offset}: a console block "
                                        "starts with a '$ ' command")
            else:
                output.append(line)
        if command:
            commands.append(Command("\n".join(command), _output(output)))
        return commands


def _output(lines: Sequence[str]) -> str:
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README (or of ``text``), in order."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and (heading := line.lstrip("#")).startswith(" "):
            section = heading.strip()
        if "readme-test:" in line and not (
                SKIP_MARKER.fullmatch(line.strip()) and i + 1 < len(lines)
                and _FENCE.fullmatch(lines[i + 1])):
            raise ReadmeFormatError(f"README.md:{i + 1}: a readme-test marker is "
                                    "'<!-- readme-test: skip (why) -->' on the line right above "
                                    "a fence")
        fence = _FENCE.fullmatch(line)
        if fence is None:
            i += 1
            continue
        language, indent = fence["language"], fence["indent"]
        if language not in RUN | NOT_RUN:
            raise ReadmeFormatError(
                f"README.md:{i + 1}: fence tagged {language or 'nothing'!r}; tag it one of "
                f"{', '.join(sorted(RUN))} (run by the tests) or {', '.join(sorted(NOT_RUN))}")
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ReadmeFormatError(f"README.md:{i + 1}: the fence is never closed")
        marker = SKIP_MARKER.fullmatch(lines[i - 1].strip()) if i else None
        body = [text_line.removeprefix(indent) for text_line in lines[i + 1:end]]
        blocks.append(Block(i + 1, language, "\n".join(body) + "\n", section,
                            marker["why"] if marker else None))
        i = end + 1
    return blocks


def section_blocks(section: str, language: str, text: str | None = None) -> list[Block]:
    """The blocks in ``language`` under the heading ``section``."""
    return [b for b in readme_blocks(text) if b.section == section and b.language == language]


def session_script(blocks: Sequence[Block], replace: Mapping[str, str] | None = None) -> str:
    """One bash script running every block that :attr:`Block.runs`, in order, with each
    ``replace`` key (an address, say) replaced by its value in the block's text, and markers
    around blocks and console commands that :func:`run_session` splits the output on."""
    parts = ["set -eo pipefail"]
    for index, block in enumerate(blocks):
        if not block.runs:
            continue
        text = block.text
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        parts.append(f"echo '{_MARK} start {index}'")
        if block.language == "python":
            delimiter = "SLUICE_README_PYTHON_BLOCK"
            assert delimiter not in text
            parts.append(f"python - <<'{delimiter}'\n{text}{delimiter}")
        elif block.language == "console":
            for sub, command in enumerate(Block(0, "console", text, "").commands()):
                parts.append(f"echo '{_MARK} command {index} {sub}'\n{command.text}")
        else:
            parts.append(text)
        parts.append(f"echo '{_MARK} end {index}'")
    return "\n".join(parts) + "\n"


@dataclass
class BlockRun:
    """What one block printed (stdout and stderr together) and, for a console block, what
    each command printed; ``finished``: the session went past its last line."""

    output: list[str] = field(default_factory=list)
    commands: dict[int, list[str]] = field(default_factory=dict)
    finished: bool = False


@dataclass
class Session:
    """A finished session: its exit status (None: killed at the timeout) and each block's run,
    by index into the blocks it was given."""

    status: int | None
    runs: dict[int, BlockRun]
    script: str


def run_session(blocks: Sequence[Block], workdir: Path, env: Mapping[str, str], *,
                replace: Mapping[str, str] | None = None, timeout_s: float = 240) -> Session:
    """Run :func:`session_script` with bash in ``workdir`` under ``env``; on a timeout the
    whole process group is killed (commands may have children)."""
    script = session_script(blocks, replace)
    proc = subprocess.Popen(["bash", "-c", script], cwd=workdir, env=dict(env),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        status: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status = None
    runs: dict[int, BlockRun] = {}
    current: BlockRun | None = None
    command: list[str] | None = None
    for line in out.splitlines():
        mark = _MARK_LINE.search(line)
        # A command whose output has no final newline leaves the next marker on its last line.
        text = line if mark is None else line[:mark.start()]
        if current is not None and (mark is None or text):
            current.output.append(text)
            if command is not None:
                command.append(text)
        if mark is None:
            continue
        if mark["what"] == "start":
            current, command = runs.setdefault(int(mark["index"]), BlockRun()), None
        elif mark["what"] == "end" and current is not None:
            current.finished, current, command = True, None, None
        elif current is not None:
            command = current.commands[int(mark["sub"])] = []
    return Session(status, runs, script)


def problems(blocks: Sequence[Block], session: Session) -> list[str]:
    """What a reader would have hit, one entry per block, in order: the block that ended the
    session (with its status and output), tracebacks, stated output that differs, and the
    blocks never reached."""
    found: list[str] = []
    for index, block in enumerate(blocks):
        if not block.runs:
            continue
        run = session.runs.get(index)
        if run is None:
            found.append(f"{block.where}: never ran (an earlier block ended the session)")
            continue
        output = "\n".join(run.output)
        if not run.finished:
            how = ("timed out" if session.status is None
                   else f"exit status {session.status}")
            found.append(f"{block.where}: {how}; output:\n{_tail(output)}")
        elif TRACEBACK in output:
            found.append(f"{block.where}: a traceback in its output:\n{_tail(output)}")
        if block.language == "console" and run.finished:
            for sub, command in enumerate(block.commands()):
                said = _output(run.commands.get(sub, []))
                if said != command.output:
                    found.append(f"{block.where}: `{command.text}` printed\n{said}\n"
                                 f"where the README says\n{command.output}")
    return found


def _tail(text: str, chars: int = 3000) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def venv_root() -> Path | None:
    """The virtual environment running these tests (the quick start's ``.venv``), or None
    when this Python is not a venv."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


def reader_checkout(workdir: Path, venv: Path) -> Path:
    """``workdir`` made to look like the repository root after the quick start: a link to each
    top-level entry of this checkout, and ``.venv`` linking to ``venv``. What the README's
    commands create lands in ``workdir``, never in the checkout's own top level."""
    workdir.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name not in {".git", ".venv"} and not entry.name.startswith(".sluice-state"):
            (workdir / entry.name).symlink_to(entry)
    (workdir / ".venv").symlink_to(venv)
    return workdir


def fresh_terminal(env: Mapping[str, str], venv: Path) -> dict[str, str]:
    """``env`` as a new terminal has it: without the venv's ``bin`` on PATH and without
    ``VIRTUAL_ENV``, so only the README's own activation can put ``sluice`` there."""
    bin_dir = str(venv / "bin")
    path = [p for p in env.get("PATH", "").split(os.pathsep)
            if p and os.path.realpath(p) != os.path.realpath(bin_dir)]
    clean = {k: v for k, v in env.items() if k not in {"VIRTUAL_ENV", "PYTHONHOME"}}
    clean["PATH"] = os.pathsep.join(path)
    return clean
