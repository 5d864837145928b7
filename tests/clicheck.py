"""Running the command line in tests: a user mistake must give exit status 2 and one line on stderr."""

from __future__ import annotations

from typer.testing import CliRunner

from galaxy_models.cli import app

runner = CliRunner()


def mistake(args: list[str], *expected: str, env: dict[str, str] | None = None) -> str:
    """Run the command line; check exit status 2 and one line on stderr holding every ``expected``."""
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert "pydantic.dev" not in result.output
    return lines[0]
