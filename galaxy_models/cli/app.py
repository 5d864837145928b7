"""The ``galaxy-pipeline`` application: its command groups, shared options, and one-line errors.

Commands import what they need when they run, so ``--help``, ``--version``, every command that needs
no model (labels, datasets verify, models versions/promote, catalog export) and the mistakes classify
can report before it runs a model start without torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from galaxy_models.cli.errors import FAILED, USAGE, UserError, describe_validation, one_line
from galaxy_models.storage import StorageError, Store, StoreNotFoundError


def _message(error: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an exception a command let through."""
    if isinstance(error, typer.TyperException):  # usage errors (typer's click) and ours
        return one_line(error.format_message()), error.exit_code
    if isinstance(error, ValidationError):
        return describe_validation(error), USAGE
    if isinstance(error, ValueError | StorageError | OSError):
        return one_line(str(error)), USAGE
    if isinstance(error, RuntimeError):
        return one_line(str(error)), FAILED
    raise error


class _OneLineErrors(TyperGroup):
    """Runs the command line and turns every user mistake into ``error: ...`` on stderr, exit 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except typer.Abort:
            typer.echo("error: interrupted", err=True)
            code = 130
        except Exception as error:
            if os.environ.get("GALAXY_DEBUG") == "1":
                raise
            message, code = _message(error)
            typer.secho(f"error: {message}", err=True, fg="red")
        if standalone_mode:
            sys.exit(code)
        return code


def _version(show: bool) -> None:
    if show:
        try:
            number = version("galaxy-pipeline")
        except PackageNotFoundError:  # a checkout on sys.path without installation
            number = "unknown (not installed)"
        typer.echo(f"galaxy-pipeline {number}")
        raise typer.Exit()


app = typer.Typer(
    cls=_OneLineErrors,
    help="Galaxy morphology classification pipeline (GZ2, CS_ResNet50).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    show_version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Galaxy morphology classification pipeline (GZ2, CS_ResNet50)."""


labels_app = typer.Typer(help="Galaxy Zoo 2 vote tables and Table I labels.", no_args_is_help=True)
models_app = typer.Typer(help="Model architectures and the published models in a store.", no_args_is_help=True)
datasets_app = typer.Typer(help="Dataset versions (WebDataset shards + manifest).", no_args_is_help=True)
catalog_app = typer.Typer(help="Classification catalogs.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")
app.add_typer(models_app, name="models")
app.add_typer(datasets_app, name="datasets")
app.add_typer(catalog_app, name="catalog")

JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of a table")]
StoreOption = Annotated[
    str, typer.Option("--store", envvar="GALAXY_STORE", help="store URI: a local directory or s3://bucket/prefix")
]


def existing_store(uri: str) -> Store:
    """The store at ``uri``, or a ``UserError`` if it does not exist or is empty."""
    from galaxy_models.storage import require_store

    try:
        return require_store(uri)
    except StoreNotFoundError as err:
        raise UserError(
            f"{err}; give --store (or GALAXY_STORE) the directory or s3:// URI that synth or ingest wrote"
        ) from err


def png_out(out: Path, example: str) -> Path:
    """``out`` checked as the PNG file a command writes: not a directory, a ``.png`` name, in a folder
    that exists (``example``: a file name to suggest)."""
    if out.is_dir():
        raise UserError(f"--out {str(out)!r} is a directory; give a file name, e.g. {str(out / example)!r}")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {str(out)!r} is not a .png file name; the figure is written as PNG")
    if not out.parent.is_dir():
        raise UserError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist")
    return out


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def echo_err(line: str) -> None:
    typer.echo(line, err=True)
