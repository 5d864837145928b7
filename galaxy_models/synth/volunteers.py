"""Simulated Galaxy Zoo 2 volunteers: a Kaggle-format vote table for synthetic galaxies.

Each galaxy is shown to an odd number of volunteers (35-61, as in GZ2). Every volunteer walks the
decision tree in ``labels.DECISION_TREE``: the number reaching a question is the number who gave
its parent answer, and the answers there are drawn from that galaxy's answer probabilities. The
published fractions are counts over all volunteers, so the table is cumulative exactly as Kaggle's
(Q1 and Q6 sum to one, every other question to its parent answer).

A galaxy meant to be labelled gets confident probabilities for its class (jittered per galaxy), so
Table I usually gives that class back; a galaxy meant to be unlabelled gets uninformative
probabilities, redrawn until Table I assigns it no class, like the half of GZ2 that the paper drops.
An odd number of volunteers also rules out the one tie (7.1 = 7.2 = 0.5) that would match two rules.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from galaxy_models.labels import DECISION_TREE, ID_COLUMN, NO_CLASS, TABLE_I, VOTE_COLUMNS, assign_classes

SMOOTH, FEATURES = (0, 1, 2), (3, 4)
# Answer probabilities per question for galaxies of each class; questions not listed for a class
# use DEFAULT. They are centres: each galaxy draws its own from a Dirichlet around them.
DEFAULT: dict[int, tuple[float, ...]] = {
    1: (0.34, 0.33, 0.33),
    2: (0.2, 0.8),
    3: (0.25, 0.75),
    4: (0.3, 0.7),
    5: (0.1, 0.5, 0.3, 0.1),
    6: (0.12, 0.88),
    7: (0.3, 0.5, 0.2),
    8: (0.15, 0.15, 0.1, 0.15, 0.15, 0.1, 0.2),
    9: (0.4, 0.2, 0.4),
    10: (0.35, 0.45, 0.2),
    11: (0.3, 0.4, 0.1, 0.05, 0.05, 0.1),
}
CONFIDENT: dict[int, dict[int, tuple[float, ...]]] = {
    0: {1: (0.88, 0.11, 0.01), 7: (0.93, 0.06, 0.01)},
    1: {1: (0.88, 0.11, 0.01), 7: (0.06, 0.92, 0.02)},
    2: {1: (0.88, 0.11, 0.01), 7: (0.02, 0.1, 0.88)},
    3: {1: (0.06, 0.93, 0.01), 2: (0.93, 0.07), 9: (0.5, 0.15, 0.35)},
    4: {1: (0.06, 0.93, 0.01), 2: (0.03, 0.97), 4: (0.95, 0.05)},
}
CONCENTRATION = 120.0  # Dirichlet concentration around the centres: larger = less galaxy-to-galaxy spread
VOLUNTEERS = (35, 61)  # inclusive range; only odd counts are used


def _answer_probabilities(intended: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Per question, a (galaxies x answers) array of answer probabilities."""
    probs: dict[int, np.ndarray] = {}
    for question in DECISION_TREE:
        q = question.number
        out = np.empty((intended.size, question.answers))
        for label in np.unique(intended):
            rows = intended == label
            if label == NO_CLASS:
                out[rows] = rng.dirichlet(np.ones(question.answers), size=int(rows.sum()))
            else:
                centre = np.asarray(CONFIDENT[int(label)].get(q, DEFAULT[q]))
                out[rows] = rng.dirichlet(CONCENTRATION * centre, size=int(rows.sum()))
        probs[q] = out
    return probs


def _walk_tree(probs: dict[int, np.ndarray], volunteers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vote counts per answer column, for every galaxy, from volunteers walking the tree."""
    counts: dict[str, np.ndarray] = {}
    for question in DECISION_TREE:  # ordered so that every parent comes before its children
        reaching = volunteers if question.parent is None else counts[question.parent]
        drawn = rng.multinomial(reaching, probs[question.number])
        counts.update(zip(question.columns, drawn.T, strict=True))
    return np.stack([counts[c] for c in VOTE_COLUMNS], axis=1)


def _vote_table(galaxy_ids: np.ndarray, intended: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    volunteers = 2 * rng.integers(VOLUNTEERS[0] // 2, VOLUNTEERS[1] // 2 + 1, size=intended.size) + 1
    counts = _walk_tree(_answer_probabilities(intended, rng), volunteers, rng)
    frame = pd.DataFrame(counts / volunteers[:, None], columns=list(VOTE_COLUMNS))
    frame.insert(0, ID_COLUMN, galaxy_ids)
    return frame


def simulate_votes(
    galaxy_ids: np.ndarray, intended: np.ndarray, rng: np.random.Generator, *, max_redraws: int = 200
) -> pd.DataFrame:
    """A Kaggle-format vote table (``GalaxyID`` + 37 columns) for galaxies of intended classes.

    Args:
        galaxy_ids: unique IDs, one per galaxy.
        intended: class 0-4 per galaxy, or ``NO_CLASS`` (-1) for a galaxy Table I should not label.
        rng: the source of randomness.
        max_redraws: how often unlabelled galaxies that Table I happens to label are redrawn.
    """
    intended = np.asarray(intended)
    if intended.shape != np.shape(galaxy_ids):
        raise ValueError(f"{len(galaxy_ids)} galaxy ids but {intended.size} intended classes")
    bad = ~np.isin(intended, [NO_CLASS, *range(len(TABLE_I))])
    if bad.any():
        raise ValueError(f"intended classes must be -1..4, got {sorted(set(intended[bad].tolist()))!r}")
    frame = _vote_table(np.asarray(galaxy_ids), intended, rng)
    for _ in range(max_redraws):
        stray = (intended == NO_CLASS) & (assign_classes(frame) != NO_CLASS)
        if not stray.any():
            return frame
        redrawn = _vote_table(frame.loc[stray, ID_COLUMN].to_numpy(), intended[stray], rng)
        frame.loc[stray, list(VOTE_COLUMNS)] = redrawn[list(VOTE_COLUMNS)].to_numpy()
    raise RuntimeError(f"could not draw unclassifiable votes for {int(stray.sum())} galaxies")
