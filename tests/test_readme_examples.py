"""The README's "Python API and pytest plugin" examples run as written."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import pvdbg.session  # noqa: F401  (imported before pytester runs: see test_pytest_plugin)

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Python API and pytest plugin"

pytest_plugins = ["pytester"]


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end < 0 else text[start:end]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), re.S)


def test_the_section_has_examples():
    assert len(_blocks("python")) == 3 and len(_blocks("sh")) == 1


@pytest.mark.parametrize("index", [0, 1])
def test_python_examples_run(index, tmp_path, monkeypatch, capsys):
    code = [b for b in _blocks("python") if "def test_" not in b][index]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md python example {index + 1}", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    for shown in re.findall(r"#\s+(b'[^']*'|bench_loop\(1000\) = 0x[0-9a-f]+|shutdown poweroff|"
                            r"traces are identical)", code):
        assert shown.strip("b'") in out


def test_pytest_example_runs_under_the_plugin(pytester):
    code = next(b for b in _blocks("python") if "def test_" in b)
    pytester.makepyfile(test_readme_example=code)
    first = pytester.runpytest("-q", "-p", "no:cacheprovider", "--pvdbg-refresh-golden")
    first.assert_outcomes(passed=3)
    assert (pytester.path / "golden" / "boot.jsonl").exists()
    again = pytester.runpytest("-q", "-p", "no:cacheprovider")
    again.assert_outcomes(passed=3)


@pytest.mark.e2e
def test_shell_examples_run(tmp_path):
    for line in _blocks("sh")[0].strip().splitlines():
        command, _, comment = line.partition("#")
        expected = int(m.group(1)) if (m := re.search(r"exit (\d+)", comment)) else 0
        argv = shlex.split(command)
        assert argv[0] == "pvdbg"
        r = subprocess.run([sys.executable, "-m", "pvdbg.cli", *argv[1:]], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == expected, (line, r.stdout, r.stderr)
    assert (tmp_path / "b.json").read_text().startswith('{"displayTimeUnit"')
