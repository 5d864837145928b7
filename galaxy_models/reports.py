"""Human-readable reports of pipeline results (plain data and markdown; Prefect renders them)."""

from __future__ import annotations

from typing import Any

from galaxy_models.shards import DatasetManifest
from galaxy_models.splits import SPLITS


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
