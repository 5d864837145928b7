"""Commands on models: ``models list``, ``train``, ``models versions``, ``models promote``, ``models quantize``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from galaxy_models.cli.app import JsonOption, StoreOption, app, echo_err, existing_store, models_app, table
from galaxy_models.cli.errors import Failed, UserError

if TYPE_CHECKING:
    from galaxy_models.registry.cards import ModelCard


@models_app.command("list")
def models_list(as_json: JsonOption = False) -> None:
    """Registered architectures with their parameter counts and GMACs at 224x224."""
    from galaxy_models.models.architectures import model_table

    rows = model_table()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    typer.echo(
        table(
            ["model", "parameters", "GMACs@224"], [[r["name"], f"{r['params']:,}", f"{r['gmacs']:.3f}"] for r in rows]
        )
    )


def parse_settings(settings: list[str]) -> dict[str, object]:
    """``--set key=value`` pairs; values are read as JSON where they parse (numbers, booleans, objects).
    An unknown key is refused with the closest ``TrainConfig`` field."""
    from galaxy_models.training.config import TrainConfig, closest_setting

    parsed: dict[str, object] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        if key not in TrainConfig.model_fields:
            guess = closest_setting(key)
            hint = f"; did you mean {guess!r}?" if guess else f"; settings: {', '.join(TrainConfig.model_fields)}"
            raise UserError(f"unknown setting {key!r} for --set{hint}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


@app.command()
def train(
    store: StoreOption,
    preset: Annotated[str | None, typer.Option(help="paper (Table IV settings) or smoke (seconds on a CPU)")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset name (default: the preset's, else gz2)")] = None,
    model: Annotated[str | None, typer.Option(help="registered architecture, e.g. cs_resnet50")] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="global batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="base learning rate")] = None,
    image_size: Annotated[int | None, typer.Option(help="input side; smaller than the crop resizes it")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    processes: Annotated[int | None, typer.Option(help="processes for torchrun (default: one per GPU, or 1)")] = None,
    max_restarts: Annotated[
        int | None, typer.Option(help="restarts after a process dies, resuming from the last checkpoint (default 1)")
    ] = None,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="any other TrainConfig field, key=value (repeatable)")
    ] = None,
    promote_it: Annotated[
        bool, typer.Option("--promote", help="make the published model production if it passes the gate")
    ] = False,
    force: Annotated[bool, typer.Option("--force-promote", help="promote it even if the gate refuses")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train a model with torchrun, evaluate its best epoch on val and test, publish it under models/."""
    from galaxy_models.training.config import TrainConfig
    from galaxy_models.training.launch import TrainingFailed
    from galaxy_models.training.pipeline import train_evaluate_publish

    given = {
        "preset": preset, "store": store, "dataset": dataset, "model": model, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "image_size": image_size, "seed": seed, "processes": processes,
        "max_restarts": max_restarts,
    }  # fmt: skip
    config = TrainConfig.model_validate(
        {**{k: v for k, v in given.items() if v is not None}, **parse_settings(settings or [])}
    )
    target = existing_store(config.store)
    try:
        outcome = train_evaluate_publish(
            config,
            promote_it=promote_it or force,
            force=force,
            log=echo_err if as_json else typer.echo,
            progress=not as_json,
        )
    except TrainingFailed as err:  # its output went to the log above
        raise Failed(str(err).splitlines()[0] + "; see the training output above") from err
    _report_training(outcome.card, target.url(f"models/{outcome.card.name}/{outcome.card.version}/card.json"),
                     promoted=outcome.production is not None, store=store, as_json=as_json)  # fmt: skip


def _report_training(card: ModelCard, location: str, *, promoted: bool, store: str, as_json: bool) -> None:
    """What ``train`` prints: Table V per split and where the card is, or one JSON line."""
    from galaxy_models.metrics import table_v

    if as_json:
        summary = {
            "name": card.name, "version": card.version, "card": location, "best_epoch": card.best_epoch,
            "promoted": promoted, "training_images_per_second": card.training_images_per_second,
            "metrics": {split: m.model_dump() for split, m in card.metrics.items()},
        }  # fmt: skip
        typer.echo(json.dumps(summary))
        return
    for split, m in card.metrics.items():
        typer.echo(f"\n{split} ({m.samples} images):\n" + table_v({card.architecture: m}))
    typer.echo(f"\npublished {card.name}/{card.version}: {location}")
    if promoted:
        typer.echo(f"{card.name}: production is now {card.version}")
    else:
        typer.echo(f"promote it with: galaxy-pipeline models promote {card.name} {card.version} --store {store}")


@models_app.command("versions")
def models_versions(
    name: Annotated[str, typer.Argument(help="model name under models/")],
    store: StoreOption,
    as_json: JsonOption = False,
) -> None:
    """Published versions of a model with their test scores; * marks production."""
    from galaxy_models.registry.cards import list_models, list_versions, production_version, read_card

    target = existing_store(store)
    cards = [read_card(target, name, v) for v in list_versions(target, name)]
    production = production_version(target, name)
    if as_json:
        typer.echo(json.dumps({"production": production, "versions": [c.model_dump(mode="json") for c in cards]}))
        return
    if not cards:
        published = ", ".join(list_models(target)) or "none"
        raise UserError(f"no model {name!r} in {target.uri} (published models: {published})")
    rows = []
    for card in cards:
        score = card.metrics.get("test") or next(iter(card.metrics.values()))
        rows.append(
            [f"{'*' if card.version == production else ''}{card.version}", card.architecture,
             card.created_at.strftime("%Y-%m-%d %H:%M"), f"{100 * score.accuracy:.2f}%", f"{100 * score.f1:.2f}%"]
        )  # fmt: skip
    typer.echo(table(["version", "architecture", "created (UTC)", "test accuracy", "test macro-F1"], rows))


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="model name under models/")],
    version: Annotated[str, typer.Argument(help="published version to serve")],
    store: StoreOption,
    min_val_f1: Annotated[
        float | None, typer.Option(help="validation macro-F1 floor (default: the one its training set)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="promote even if the gate refuses")] = False,
) -> None:
    """Make a published version the production model, if it passes the gate (a validation macro-F1
    floor, and production's score on the same data). A conditional write: concurrent promotions
    cannot both land."""
    from galaxy_models.registry.cards import promote

    production = promote(existing_store(store), name, version, floor=min_val_f1, force=force)
    before = f" (was {production.previous})" if production.previous else ""
    typer.echo(f"{name}: production is now {version}{before}")


@models_app.command("quantize")
def models_quantize(
    model: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (default version: production)")],
    store: StoreOption,
    images: Annotated[int, typer.Option(min=1, help="training-split images to calibrate on")] = 300,
    as_json: JsonOption = False,
) -> None:
    """Build the model's int8 copy for CPU inference (OpenVINO NNCF post-training quantisation,
    calibrated on its training split), keep it beside the weights, and check its classes against fp32
    on the validation split (recorded in the card; `classify --precision auto` serves int8 only when
    at least 99.5% agree). A current copy is not built again."""
    from galaxy_models.domain import ModelRef
    from galaxy_models.registry.cards import resolve

    target = existing_store(store)
    card = resolve(target, ModelRef.parse(model))
    from galaxy_models.inference.precision import ensure_int8_copy
    from galaxy_models.registry.weights import load_model

    network, card = load_model(target, card.name, card.version)
    check = ensure_int8_copy(target, card, network, calibration_images=images)
    if as_json:
        typer.echo(check.model_dump_json())
        return
    verdict = "auto serves it in int8" if check.passed else "auto keeps it in a higher precision"
    typer.echo(f"{card.name}/{card.version}: int8 copy ready; {check.describe()}; {verdict}")
