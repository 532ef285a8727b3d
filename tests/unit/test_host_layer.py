"""The host layer a stock Mac runs: a Makefile of one-line recipes that GNU make 3.81 reads, under a
POSIX /bin/sh, over a CLI in Python 3.9's standard library; and the Makefile in step with the CLI."""

import ast
import re
import subprocess
import sys

import pytest

from devstack import cli
from devstack.develop import shell_scripts
from tests.support.helpers import ROOT

MAKEFILE = (ROOT / "Makefile").read_text()
# What GNU make 3.81 lacks or reads otherwise: .SHELLFLAGS (ignored: recipes would silently lose
# their flags), .ONESHELL, $(file ...), != and ::= assignments, undefine, private, .RECIPEPREFIX,
# and the functions newer makes added.
NEWER_THAN_381 = [r"\.SHELLFLAGS", r"\.ONESHELL", r"\$\(file\b", r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*!=",
                  r"::=", r"^\s*undefine\b", r"\bprivate\b", r"\.RECIPEPREFIX", r"\$\((guile|abspath|realpath|"
                  r"intcmp|let|and|or)\b", r"^\s*define\s+\S+\s*[:+?!]?=", r"\$\(eval\b", r"^\s*-?include\b"]
HOST_PYTHON = sorted((ROOT / "devstack").glob("*.py"))


@pytest.mark.parametrize("pattern", NEWER_THAN_381)
def test_the_makefile_uses_nothing_newer_than_make_381(pattern):
    assert not re.search(pattern, MAKEFILE, re.M), pattern


def test_the_makefile_runs_recipes_with_plain_sh():
    assert re.search(r"^SHELL = /bin/sh$", MAKEFILE, re.M)
    assert "bash" not in MAKEFILE


def recipes():
    """{target: [recipe lines]} of the Makefile."""
    found, target = {}, None
    for line in MAKEFILE.splitlines():
        match = re.match(r"^([a-z][a-z0-9-]*):", line)
        if match:
            target = match.group(1)
            found[target] = []
        elif line.startswith("\t") and target:
            found[target].append(line.strip())
    return found


def test_every_recipe_is_one_line_that_calls_the_cli():
    for target, lines in recipes().items():
        assert lines == [f"@$(DEVSTACK) {target}"], target


def test_the_makefile_has_a_target_for_each_command_and_no_other():
    commands = set(cli.TABLE) | {"help"}
    assert set(recipes()) == commands
    phony = re.search(r"^\.PHONY:(.*?)(?<!\\)\n", MAKEFILE, re.M | re.S).group(1).replace("\\\n", " ")
    assert set(phony.split()) == commands


def test_make_help_lists_every_command():
    output = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    assert re.findall(r"^  make (\S+)", output, re.M) == list(cli.TABLE)


@pytest.mark.parametrize("path", HOST_PYTHON, ids=lambda path: path.name)
def test_host_python_parses_as_python_39(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("path", HOST_PYTHON, ids=lambda path: path.name)
def test_host_python_imports_only_the_standard_library(path):
    assert set(imports(path)) <= set(sys.stdlib_module_names), path.name


def host_programs(path):
    """The programs the host CLI runs: the first word of each command list it builds."""
    text = path.read_text()
    return set(re.findall(r'\[\s*"([a-z][a-z0-9-]+)",', text))


def test_the_cli_runs_no_gnu_tool_and_no_bash():
    used = set().union(*(host_programs(path) for path in HOST_PYTHON))
    # The lists name docker's own words too (image, inspect ...): only names that are programs on a
    # Unix host, and not among the required ones, are checked.
    forbidden = {"bash", "timeout", "sed", "awk", "find", "grep", "cut", "tr", "od", "curl", "flock", "du",
                 "sha256sum", "shasum", "id", "mktemp", "getconf"}
    assert {"docker", "ssh-keygen"} <= used  # the scan sees the commands the CLI runs
    assert not used & forbidden, used & forbidden


def test_no_host_script_needs_bash():
    """Shell that runs on the host for users is POSIX sh; bash remains only inside the images (Debian)
    and in CI and test fixtures, which run on Linux."""
    host = [path for path in shell_scripts(ROOT)
            if not str(path.relative_to(ROOT)).startswith(("images/", ".ci/", "tests/"))]
    for path in host:
        first = path.read_text().splitlines()[0]
        assert "bash" not in first, path
