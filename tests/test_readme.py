"""README's commands are the ones CI runs: every command of its first bash block stands, verbatim, at the
start of a line of .ci/run (a README command that fails on a fresh clone then fails CI)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_readme_commands_verbatim():
    commands = readme_commands()
    assert any(c.startswith("pip install") for c in commands) and any(c.startswith("prunekit ") for c in commands)
    assert any("pytest" in c for c in commands)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert any(line.startswith(command) for line in ci_lines), f".ci/run does not run README's {command!r}"


def test_readme_install_gives_the_test_command_what_it_needs():
    """The test command's line installs the test extras first (pytest is not a dependency of prunekit)."""
    test_line = next(c for c in readme_commands() if "pytest" in c)
    assert test_line.index('pip install -e ".[test') < test_line.index("python -m pytest")


def test_readme_method_table_is_the_registry():
    """Every registered method has its row in README, from its config's `summary` and `paper`, in registry
    order (a new method documents itself; a changed summary updates README or fails here)."""
    from prunekit.methods import method_table

    assert method_table() in (ROOT / "README.md").read_text(), "README's method table differs from " \
        "prunekit.methods.method_table(): paste its output into README"
