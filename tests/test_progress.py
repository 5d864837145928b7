"""Progress: a bar on a terminal, plain periodic lines in logs, nothing when disabled."""

from __future__ import annotations

import pytest

from galaxy_models import progress as progress_module
from galaxy_models.progress import LineProgress, progress_bar, progress_counter


def test_logs_get_plain_periodic_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    monkeypatch.setenv("GALAXY_PROGRESS_INTERVAL", "0")
    with progress_counter(total=4, desc="ingest train", unit="img") as counter:
        assert isinstance(counter, LineProgress)
        counter.update(1)
        counter.update(3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("ingest train: 1/4 img (25%), ")
    assert lines[-1].startswith("ingest train: 4/4 img (100%), ")
    assert all("\r" not in line for line in lines)


def test_lines_are_rate_limited(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    monkeypatch.setenv("GALAXY_PROGRESS_INTERVAL", "3600")
    assert list(progress_bar(range(1000), desc="epoch 1/2", unit="batch")) == list(range(1000))
    assert capsys.readouterr().err.splitlines()[0].startswith("epoch 1/2: 1000/1000 batch (100%)")
    with progress_counter(total=None, desc="parts", unit="part") as counter:
        for _ in range(50):
            counter.update()
    err = capsys.readouterr().err.splitlines()  # one line, at the end: none during the interval
    assert len(err) == 1
    assert err[0].startswith("parts: 50 part, ")


def test_a_terminal_gets_a_bar_and_disabled_gets_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tqdm import tqdm

    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    with progress_counter(total=2, desc="bar") as counter:
        assert isinstance(counter, tqdm)
    with progress_counter(total=2, desc="quiet", enabled=False) as counter:
        counter.update(2)
    assert "quiet" not in capsys.readouterr().err
