"""The pipeline's shared vocabulary: class names, catalog flags, names and IDs, model references.

Every layer uses these instead of its own literals, so a rule changes in one place. Nothing here
imports more than the standard library and pydantic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator

# The paper's five classes, in label order (0-4).
CLASS_NAMES: tuple[str, ...] = ("round", "in-between", "cigar", "edge-on", "spiral")

# Names of datasets, models, model versions, surveys and batches, and galaxy IDs: safe as a storage
# key segment and as a file name, and never read as a command-line option (no leading '-').
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RULE = "letters, digits, '_' and '-' (at most 64, not first)"


LOW_CONFIDENCE = 0.5  # default threshold: a row whose top probability is below it is flagged low_confidence


class Flag(StrEnum):
    """What a catalog row says about its classification."""

    OK = "ok"
    LOW_CONFIDENCE = "low_confidence"  # top probability below the run's threshold
    UNREADABLE = "unreadable"  # the image could not be read; ``reason`` says why
    MISSING = "missing"  # planned into the batch's catalog, then gone from the store before it was read


FLAGS: tuple[str, ...] = tuple(flag.value for flag in Flag)


def is_name(value: str) -> bool:
    return bool(NAME_PATTERN.fullmatch(value))


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a valid name or ID, else raise ``ValueError`` naming it and ``what`` it is."""
    if not isinstance(value, str) or not is_name(value):
        raise ValueError(f"invalid {what} {value!r}: use {NAME_RULE}")
    return value


def galaxy_id_from_key(key: str) -> str:
    """The galaxy ID a storage key or file name carries: its last segment without the extension."""
    name = key.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


@dataclass(frozen=True)
class ModelRef:
    """``NAME`` (the production version of that model) or ``NAME@VERSION`` (one published version)."""

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Raises ``ValueError`` naming the bad part."""
        name, at, version = text.partition("@")
        if at and not version:
            raise ValueError(f"invalid model reference {text!r}: nothing after '@'; use NAME or NAME@VERSION")
        return cls(check_name(name, "model name"), check_name(version, "model version") if version else None)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


def _check_model_ref(text: str) -> str:
    ModelRef.parse(text)
    return text


# A config field holding ``NAME`` or ``NAME@VERSION``, validated; it stays a string in forms and JSON.
ModelRefText = Annotated[str, AfterValidator(_check_model_ref)]


# A config field holding a name or ID, validated.
Name = Annotated[str, AfterValidator(check_name)]
