"""Catalog rows from class probabilities: top class, confidence, entropy, flags, unreadable rows."""

from __future__ import annotations

import math

import numpy as np

from galaxy_models.catalogs.schema import CATALOG_SCHEMA, PROBABILITY_COLUMNS, catalog_rows


def test_rows_follow_the_probabilities() -> None:
    p = np.array([[0.9, 0.05, 0.02, 0.02, 0.01], [0.3, 0.3, 0.1, 0.1, 0.2], [np.nan] * 5], dtype=np.float32)
    table = catalog_rows(
        "b1", ["incoming/b1/100.jpg", "incoming/b1/101.jpg", "incoming/b1/102.jpg"], [None, None, "corrupt"], p,
        model_name="m", model_version="v", low_confidence=0.5,
    )  # fmt: skip
    assert table.schema == CATALOG_SCHEMA
    rows = table.to_pylist()
    assert [r["galaxy_id"] for r in rows] == ["100", "101", "102"]
    assert [r["predicted_class"] for r in rows] == [0, 0, None]
    assert [r["predicted_label"] for r in rows] == ["round", "round", None]
    assert [r["flag"] for r in rows] == ["ok", "low_confidence", "unreadable"]
    assert rows[2]["reason"] == "corrupt"
    assert rows[0]["confidence"] == np.float32(0.9)
    expected = -sum(float(v) * math.log(float(v)) for v in p[0])
    assert math.isclose(rows[0]["entropy"], expected, rel_tol=1e-5)
    assert PROBABILITY_COLUMNS == ("p_round", "p_in_between", "p_cigar", "p_edge_on", "p_spiral")
    assert all(rows[2][c] is None for c in PROBABILITY_COLUMNS)
