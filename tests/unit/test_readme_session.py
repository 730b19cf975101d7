"""tests/support/readme.py on made-up READMEs, no server: how fences and skip markers are read,
and that a session reports each thing a reader would hit (a failing command, a NameError, a
traceback printed with status 0, stated output that differs, ``sluice`` before activation)
while a README without them passes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.readme import (
    Block,
    Command,
    ReadmeFormatError,
    fresh_terminal,
    problems,
    reader_checkout,
    readme_blocks,
    run_session,
    venv_root,
)

ACTIVATE = "```bash\nsource .venv/bin/activate\n```\n"


def run(tmp_path: Path, text: str, **replace: str) -> list[str]:
    """The problems of a session over ``text`` started as the README test starts one."""
    venv = venv_root()
    assert venv is not None, "run the tests from the quick start's .venv"
    blocks = readme_blocks(text)
    session = run_session(blocks, reader_checkout(tmp_path / "clone", venv),
                          fresh_terminal(os.environ, venv), replace=replace, timeout_s=90)
    return problems(blocks, session)


def test_blocks_carry_their_line_section_language_and_skip_reason():
    text = ("# Title\n\n## Calling it\n\n<!-- readme-test: skip (needs docker) -->\n"
            "```bash\ndocker run x\n```\n\n### Details\n\n"
            "```console\n$ echo a \\\n    b\na b\n$ true\n```\n\n  ```text\n  tree\n  ```\n")
    blocks = readme_blocks(text)
    assert [(b.line, b.language, b.section, b.skip, b.runs) for b in blocks] == [
        (6, "bash", "Calling it", "needs docker", False),
        (12, "console", "Details", None, True),
        (19, "text", "Details", None, False),
    ]
    assert blocks[0].text == "docker run x\n" and blocks[2].text == "tree\n"
    assert blocks[1].commands() == [Command("echo a \\\n    b", "a b"), Command("true", "")]


@pytest.mark.parametrize(("text", "message"), [
    ("```\nls\n```\n", "README.md:1: fence tagged 'nothing'"),
    ("```py\nx = 1\n```\n", "README.md:1: fence tagged 'py'"),
    ("<!-- readme-test: skip (why) -->\n\n```bash\nls\n```\n", "README.md:1: a readme-test"),
    ("<!-- readme-test: skip -->\n```bash\nls\n```\n", "README.md:1: a readme-test"),
    ("```bash\nls\n", "README.md:1: the fence is never closed"),
])
def test_an_untagged_fence_or_a_stray_marker_is_an_error(text, message):
    with pytest.raises(ReadmeFormatError, match=message):
        readme_blocks(text)


def test_a_console_block_starts_with_a_command():
    with pytest.raises(ReadmeFormatError, match="README.md:3: a console block starts"):
        Block(2, "console", "output\n$ ls\n", "").commands()


def test_a_readme_a_reader_follows_without_trouble_has_no_problems(tmp_path: Path):
    # activation holds for later blocks, a file one block writes is there for the next, a
    # replaced address reaches the command, and the skipped block (it would fail) is not run
    text = (ACTIVATE
            + "```python\nimport sys\nprint(sys.prefix)\nopen('made.txt', 'w').write('hi')\n```\n"
            + "```console\n$ cat made.txt\nhi\n$ echo 127.0.0.1:8001\nh:1\n```\n"
            + "<!-- readme-test: skip (fails) -->\n```bash\nexit 3\n```\n"
            + "```sh\nsluice --version | grep sluice\n```\n")
    assert run(tmp_path, text, **{"127.0.0.1:8001": "h:1"}) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("```bash\nsluice --version\n```\n",
     ["README.md:1 (bash, section ''): exit status 127", "sluice: command not found"]),
    (ACTIVATE + "```python\nprint(x)\n```\n",
     ["README.md:4 (python, section ''): exit status 1", "NameError: name 'x' is not defined"]),
    (ACTIVATE + "```bash\nfalse | cat\necho never\n```\n```bash\ntrue\n```\n",
     ["README.md:4 (bash, section ''): exit status 1",
      "README.md:8 (bash, section ''): never ran"]),
    (ACTIVATE + "```python\nimport traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n"
     "    traceback.print_exc()\n```\n",
     ["README.md:4 (python, section ''): a traceback in its output", "ZeroDivisionError"]),
    ("```console\n$ echo 1\n2\n$ echo 3\n3\n```\n",
     ["README.md:1 (console, section ''): `echo 1` printed\n1\nwhere the README says\n2"]),
])
def test_what_a_reader_would_hit_is_a_problem_naming_the_block(tmp_path: Path, text, expected):
    found = "\n".join(run(tmp_path, text))
    for part in expected:
        assert part in found, found
