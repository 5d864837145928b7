"""The shared vocabulary: names and IDs, model references, galaxy IDs from keys, flags."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from galaxy_models.domain import FLAGS, Flag, ModelRef, ModelRefText, Name, check_name, galaxy_id_from_key


@pytest.mark.parametrize("good", ["gz2", "cs_resnet50", "587722981741363294", "a-b_c", "x" * 64])
def test_valid_names(good: str) -> None:
    assert check_name(good) == good


@pytest.mark.parametrize("bad", ["", "-rf", "_x", "a/b", "../x", "a.b", "a b", "x" * 65, "é"])
def test_invalid_names_are_named_in_the_error(bad: str) -> None:
    with pytest.raises(ValueError, match=f"invalid batch id {bad!r}"):
        check_name(bad, "batch id")


def test_model_references() -> None:
    assert ModelRef.parse("cs_resnet50") == ModelRef("cs_resnet50", None)
    assert ModelRef.parse("cs_resnet50@0123abcd") == ModelRef("cs_resnet50", "0123abcd")
    assert str(ModelRef.parse("m@v1")) == "m@v1"
    with pytest.raises(ValueError, match="nothing after '@'"):
        ModelRef.parse("m@")
    with pytest.raises(ValueError, match="invalid model version '../x'"):
        ModelRef.parse("m@../x")
    with pytest.raises(ValueError, match="invalid model name"):
        ModelRef.parse("@v1")


def test_config_field_types() -> None:
    class Config(BaseModel):
        model: ModelRefText
        name: Name

    assert Config(model="m@v", name="n").model == "m@v"
    with pytest.raises(ValidationError, match="invalid name 'a/b'"):
        Config(model="m", name="a/b")


def test_galaxy_id_from_key_and_flags() -> None:
    assert galaxy_id_from_key("incoming/b1/587722.jpg") == "587722"
    assert galaxy_id_from_key("images/100023.jpeg") == "100023"
    assert galaxy_id_from_key("x/noext") == "noext"
    assert FLAGS == ("ok", "low_confidence", "unreadable", "missing")
    assert Flag.UNREADABLE == "unreadable"
