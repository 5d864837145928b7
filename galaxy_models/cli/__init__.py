"""The ``galaxy-pipeline`` command line (``app``; ``main`` is the console script).

One module per group of commands; each command imports the library it needs when it runs.
"""

from __future__ import annotations

from galaxy_models.cli import catalogs, data, explain, models, report  # noqa: F401  (each registers its commands)
from galaxy_models.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
