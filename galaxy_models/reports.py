"""What people read about a pipeline's results: the tables and markdown that the CLI prints and the
flows publish as Prefect artifacts. Plain data in, plain data out; no torch, no Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from galaxy_models.calibration import calibration_table
from galaxy_models.catalogs.export import ExportSummary
from galaxy_models.catalogs.incoming import SkippedBatch
from galaxy_models.catalogs.manifest import CatalogManifest
from galaxy_models.catalogs.report import ReportSummary
from galaxy_models.data.manifest import DatasetManifest
from galaxy_models.data.splits import SPLITS
from galaxy_models.metrics import per_class_table, table_v
from galaxy_models.registry.cards import ModelCard
from galaxy_models.storage import Store


def artifact_key(kind: str, name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) for ``kind`` of result about ``name``."""
    return f"{kind}-{name}".lower().replace("_", "-")


def split_table(manifest: DatasetManifest) -> list[dict[str, Any]]:
    """Samples per class and split, like the paper's Table II, with a total row."""
    rows = []
    for k, name in enumerate(manifest.class_names):
        row: dict[str, Any] = {"class": f"{k} {name}"}
        row.update({split: manifest.totals.get(split, {}).get(str(k), 0) for split in SPLITS})
        row["total"] = sum(row[s] for s in SPLITS)
        rows.append(row)
    total: dict[str, Any] = {"class": "total"}
    total.update({key: sum(r[key] for r in rows) for key in (*SPLITS, "total")})
    return [*rows, total]


def ingest_summary(manifest: DatasetManifest, manifest_uri: str) -> dict[str, Any]:
    """What ``galaxy-pipeline ingest --json`` prints."""
    return {
        "dataset": manifest.name,
        "version": manifest.version,
        "manifest": manifest_uri,
        "counts": {split: dict(manifest.totals.get(split, {})) for split in SPLITS},
    }


def ingest_markdown(manifest: DatasetManifest, manifest_uri: str, *, max_quarantine: int = 50) -> str:
    """The join and quarantine report: where every listed image went, and why any was refused."""
    c = manifest.counts
    lines = [
        f"# Dataset {manifest.name} / {manifest.version}",
        "",
        f"Manifest: `{manifest_uri}`  ",
        f"Images: `{manifest.images_uri}`  ",
        f"Labels: `{manifest.labels_uri}` (sha256 `{manifest.labels_sha256[:16]}...`)",
        "",
        "| outcome | images |",
        "| --- | ---: |",
        f"| sharded | {c.sharded} |",
        f"| quarantined | {c.quarantined} |",
        f"| no row in the vote table | {c.without_label} |",
        f"| no Table I class | {c.without_class} |",
        f"| **listed** | **{c.images_listed}** |",
        "",
        f"Counts add up: {'yes' if c.adds_up else 'NO'}. Vote-table rows without an image: "
        f"{c.labels_without_image}. Converted to RGB (grey, CMYK, palette): {c.converted_to_rgb}.",
        "",
        "| class | " + " | ".join(SPLITS) + " | total |",
        "| --- | " + " | ".join("---:" for _ in SPLITS) + " | ---: |",
    ]
    lines += [
        f"| {r['class']} | " + " | ".join(str(r[k]) for k in (*SPLITS, "total")) + " |" for r in split_table(manifest)
    ]
    if manifest.quarantine:
        lines += [
            "",
            f"## Quarantine ({len(manifest.quarantine)})",
            "",
            "| source | reason |",
            "| --- | --- |",
        ]
        lines += [f"| `{q.source_key}` | {q.reason} |" for q in manifest.quarantine[:max_quarantine]]
        if len(manifest.quarantine) > max_quarantine:
            lines.append(f"| ... | {len(manifest.quarantine) - max_quarantine} more in the manifest |")
    return "\n".join(lines) + "\n"


def training_rows(card: ModelCard) -> list[dict[str, Any]]:
    """Table V metrics of a published model, one row per split, in percent."""
    return [
        {"split": split, "images": m.samples, "accuracy %": round(100 * m.accuracy, 2),
         "precision %": round(100 * m.precision, 2), "recall %": round(100 * m.recall, 2),
         "F1 %": round(100 * m.f1, 2)}
        for split, m in card.metrics.items()
    ]  # fmt: skip


def training_markdown(card: ModelCard, store: Store) -> str:
    """A published model: what it is, how it was trained, Table V and per-class accuracy per split,
    its calibration (where the card has one), and where its files are."""
    prefix = f"models/{card.name}/{card.version}"
    sections = [
        f"# {card.name} {card.version}",
        f"{card.architecture}, {card.parameters:,} parameters, trained on {card.dataset['name']}/"
        f"{card.dataset['version']}; best epoch {card.best_epoch + 1}, "
        f"{card.training_images_per_second:.1f} training images/s on {card.hardware.get('device')} "
        f"x{card.hardware.get('processes')}.",
    ]
    for split, m in card.metrics.items():
        sections += [f"## {split}", table_v({card.architecture: m}), per_class_table({card.architecture: m})]
    if card.calibration is not None:
        sections += ["## Calibration", calibration_table(card.calibration)]
    sections += ["## Files", *(f"- {store.url(f'{prefix}/{name}')}" for name in ["card.json", *card.figures])]
    return "\n\n".join(sections)


def classify_rows(manifests: Sequence[CatalogManifest]) -> list[dict[str, Any]]:
    """Catalog rows per batch: whether test-time augmentation was used, flags and predicted classes,
    drift from the training data (``catalogs.drift``) and any warning (lineage, drift, sidecar rows)."""
    return [
        {
            "batch": m.batch_id,
            "rows": m.rows,
            "tta": m.tta,
            **m.flags,
            **{f"class {k}": v for k, v in m.classes.items()},
            **(
                {"drift JS (bits)": round(m.drift.js_divergence, 4), "drifted": m.drift.drifted}
                if m.drift is not None
                else {}
            ),
            **({"warnings": "; ".join(m.warnings)} if m.warnings else {}),
        }
        for m in manifests
    ]


def skipped_rows(skipped: Sequence[SkippedBatch]) -> list[dict[str, Any]]:
    """Folders under incoming/ that were not classified, and why."""
    return [{"folder": f"incoming/{s.folder}/", "reason": s.reason} for s in skipped]


def late_rows(late: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """Images that arrived in a batch after its catalog was planned, so are not in it."""
    return [
        {"batch": batch, "images not in catalog": len(keys), "first": keys[0], "to classify them": "use a new batch"}
        for batch, keys in late.items()
    ]


def export_rows(summary: ExportSummary) -> list[dict[str, Any]]:
    """Galaxies per predicted class, then per flag, in an export."""
    rows: list[dict[str, Any]] = [{"class": label, "galaxies": n} for label, n in summary.classes.items()]
    rows += [{"class": f"flag: {flag}", "galaxies": n} for flag, n in summary.flags.items()]
    return rows


def export_markdown(summary: ExportSummary) -> str:
    left_out = f"- left out (the format cannot hold them): {', '.join(summary.left_out)}\n" if summary.left_out else ""
    return (
        f"# Catalog export: {summary.model_name} {summary.model_version}\n\n"
        f"{summary.rows} galaxies from batches {', '.join(summary.batches)}.\n\n"
        f"- file: {summary.out}\n- class distribution and confidence histogram: {summary.figure}\n{left_out}"
    )


def report_markdown(summary: ReportSummary) -> str:
    """A markdown section linking the catalog report (``catalogs.report``) and saying what it shows."""
    local = summary.out.startswith("/")  # a path on the machine that ran the flow; s3:// URIs stay text
    link = f"[{summary.out}](<file://{summary.out}>)" if local else f"`{summary.out}`"
    maps = "" if summary.explained is None else f", where the model looked for {summary.explained}"
    return (
        f"\n## Catalog report\n\n{link} (one HTML file: open it in a browser)\n\n"
        f"Class shares per batch against training, confidence and entropy, galleries of "
        f"{sum(summary.galleries.values())} galaxies{maps}, the model card and each batch's drift.\n"
    )
