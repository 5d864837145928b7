"""The ``explain`` command: where the model looked for one galaxy (Grad-CAM and CBAM attention, a PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from galaxy_models.cli.app import StoreOption, app, existing_store, png_out


@app.command()
def explain(
    store: StoreOption,
    galaxy: Annotated[str, typer.Option(help="galaxy ID, as in the catalogs and incoming/<batch>/<ID>.jpg")],
    model: Annotated[str, typer.Option(help="NAME or NAME@VERSION (default version: production)")] = "cs_resnet50",
    out: Annotated[Path | None, typer.Option(help="PNG file to write (default: ./<galaxy>-explain.png)")] = None,
) -> None:
    """Draw one galaxy's cut-out, its Grad-CAM map and (CBAM models) spatial attention into a PNG."""
    from galaxy_models.domain import ModelRef, check_name
    from galaxy_models.registry.cards import resolve

    ref = ModelRef.parse(model)
    check_name(galaxy, "galaxy id")
    target = png_out(out if out is not None else Path(f"{galaxy}-explain.png"), f"{galaxy}-explain.png")
    source = existing_store(store)
    card = resolve(source, ref)  # an unknown model is told before torch loads
    from galaxy_models.inference.explain import explain_galaxy, panel_png

    key, explanation = explain_galaxy(source, card, galaxy)
    target.write_bytes(panel_png(explanation))
    typer.echo(
        f"galaxy {galaxy}: predicted {explanation.class_name}, p = {explanation.probability:.3f} "
        f"by {card.name}/{card.version} (image {source.url(key)})"
    )
    typer.echo(f"panel -> {target.absolute()}")
