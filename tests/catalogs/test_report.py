"""The catalog report: one self-contained HTML page (every image a data: URI that decodes, nothing
fetched), every section there, placeholders for images that are gone, rendered by a real browser
without a broken image or a script error, written once, and the command's one-line errors."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from galaxy_models.catalogs.export import merged_catalog
from galaxy_models.catalogs.figures import thumbnail_jpeg
from galaxy_models.catalogs.manifest import read_catalog_manifest
from galaxy_models.catalogs.report import ReportConfig, ReportSummary, write_report
from galaxy_models.cli import app
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.inference.classify import classify_batch
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.inference.explain import explain_keys
from galaxy_models.registry.cards import ModelCard, read_card
from galaxy_models.storage import LocalStore, Store

runner = CliRunner()
BATCHES = ("synthetic-batch-001", "synthetic-batch-002")
CHROMIUM = shutil.which("chromium")


class _Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


class _FakeExplainer:
    """A panel (one grey PNG) for every key but the first, which it 'cannot read'; remembers the calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, store: Store, card: ModelCard, keys: Sequence[str]) -> dict[str, bytes]:
        self.calls.append(list(keys))
        buffer = io.BytesIO()
        Image.new("RGB", (60, 20), (90, 90, 90)).save(buffer, format="PNG")
        return {key: buffer.getvalue() for key in keys[1:]}


@pytest.fixture(scope="module")
def classified(trained_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both incoming batches classified (batch 001 holds the bad-image corpus), then the image of the most
    uncertain galaxy deleted: the report has to show a placeholder for it."""
    root = tmp_path_factory.mktemp("report") / "store"
    shutil.copytree(trained_store, root)
    for batch in BATCHES:
        classify_batch(
            ClassifyConfig(store=str(root), model="cs_resnet_tiny", workers=2, part_size=16), batch, progress=False
        )
    store = LocalStore(root)
    card = read_card(store, "cs_resnet_tiny")
    table, _ = merged_catalog(store, card.name, card.version)
    rows = [r for r in table.to_pylist() if r["entropy"] is not None]
    store.delete(max(rows, key=lambda r: (r["entropy"], r["batch_id"], r["galaxy_id"]))["source_key"])
    return root


@pytest.fixture(scope="module")
def report(classified: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportConfig, ReportSummary, str]:
    out = tmp_path_factory.mktemp("report-out") / "report.html"
    config = ReportConfig(store=str(classified), model="cs_resnet_tiny", out=str(out), per_class=4, uncertain=8)
    summary = write_report(config, explainer=_FakeExplainer())
    return config, summary, out.read_text()


def test_every_image_is_embedded_and_decodes(report: tuple[ReportConfig, ReportSummary, str]) -> None:
    _, summary, html = report
    tags = _tags(html)
    images = [attrs for tag, attrs in tags if tag == "img"]
    assert len(images) > 20
    for attrs in images:
        match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", attrs["src"] or "")
        assert match, (attrs.get("alt"), (attrs["src"] or "")[:40])
        with Image.open(io.BytesIO(base64.b64decode(match.group(2), validate=True))) as image:
            image.load()
            assert image.format.lower() == match.group(1)
    assert not re.search(r"https?://", html)
    assert not [(tag, attrs) for tag, attrs in tags if tag in ("link", "iframe", "object", "embed")]
    assert [tag for tag, attrs in tags if "src" in attrs] == ["img"] * len(images)  # no script, frame or file
    ids = {attrs["id"] for _, attrs in tags if attrs.get("id")}
    links = [attrs["href"] or "" for tag, attrs in tags if tag == "a"]
    assert all(href.startswith("#") and href[1:] in ids for href in links), links
    assert summary.bytes == len(html.encode())


def test_every_section_is_there(report: tuple[ReportConfig, ReportSummary, str], classified: Path) -> None:
    _, summary, html = report
    ids = {attrs["id"]: attrs for _, attrs in _tags(html) if attrs.get("id")}
    expected = {f"class-{c}" for c in CLASS_NAMES} | {"uncertain", "distribution", "model-card", "drift", "explain"}
    assert expected <= set(ids)
    assert "threshold 0.5" in (ids["confidence-histogram"].get("alt") or "")
    assert "ln 5" in (ids["entropy-histogram"].get("alt") or "")
    store = LocalStore(classified)
    manifests = [read_catalog_manifest(store, b, summary.model_version) for b in BATCHES]
    unreadable = sum(m.flags.get("unreadable", 0) for m in manifests if m is not None)
    assert unreadable > 0
    assert summary.rows == summary.readable + unreadable
    assert f"{unreadable} unreadable" in html  # counted in the page, never in a gallery
    assert summary.galleries["uncertain"] == 8
    assert summary.placeholders == 1  # the deleted image: a tile that says so, no <img>
    assert html.count('class="placeholder"') >= 1
    assert "image gone from the store" in html
    assert "confusion_test.png" in html
    drifts = [m.drift for m in manifests if m is not None and m.drift is not None]
    assert len(drifts) == 2
    assert html.count("badge drifted") == sum(d.drifted for d in drifts)
    assert html.count("badge steady") == sum(not d.drifted for d in drifts)
    assert f"Newest catalog committed {max(m.created_at for m in manifests if m).isoformat(timespec='seconds')}" in html


def test_every_gallery_galaxy_links_to_its_map(report: tuple[ReportConfig, ReportSummary, str]) -> None:
    _, summary, html = report
    tags = _tags(html)
    tiles = [attrs["href"] for tag, attrs in tags if tag == "a" and attrs.get("title") == "where the model looked"]
    assert len(tiles) == sum(summary.galleries.values())
    panels = {attrs["id"] for tag, attrs in tags if tag == "figure" and "panel" in (attrs.get("class") or "")}
    assert {href[1:] for href in tiles if href} == panels
    assert summary.explained == len(panels) - 1  # the fake could not map the first key
    assert html.count("no map: image unreadable") == 1


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_a_browser_decodes_every_image_and_meets_no_script_error(
    report: tuple[ReportConfig, ReportSummary, str], tmp_path: Path
) -> None:
    config, _, html = report
    state, stderr = _render(Path(config.out or ""), tmp_path / "profile")
    assert state["data-self-check"] == "done", stderr[-2000:]
    assert state["data-images-total"] == str(html.count("<img "))
    assert (state["data-images-broken"], state["data-errors"]) == ("0", "0")
    assert "Uncaught" not in stderr
    # the self-check itself: one image that does not decode and one script error are both seen
    damaged = tmp_path / "damaged.html"
    first = re.search(r'src="(data:image/jpeg;base64,[^"]+)"', html)
    assert first is not None
    damaged.write_text(
        html.replace(first.group(1), "data:image/png;base64,AAAA", 1).replace(
            "</main>", "<script>throw new Error('boom')</script></main>"
        )
    )
    state, stderr = _render(damaged, tmp_path / "profile")
    assert (state["data-images-broken"], state["data-errors"]) == ("1", "1")
    assert "Uncaught Error: boom" in stderr


def _render(page: Path, profile: Path) -> tuple[dict[str, str | None], str]:
    """Headless Chromium's DOM after load: the <html> element's attributes, and its stderr."""
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    root = next((attrs for tag, attrs in _tags(result.stdout) if tag == "html"), None)
    assert root is not None, result.stdout[:500]
    return root, result.stderr


def test_writing_again_writes_nothing(report: tuple[ReportConfig, ReportSummary, str]) -> None:
    config, first, html = report
    out = Path(config.out or "")
    stamp = out.stat().st_mtime_ns
    second = write_report(config, explainer=_FakeExplainer())
    assert out.stat().st_mtime_ns == stamp
    assert out.read_text() == html
    assert second.model_dump(exclude={"seconds"}) == first.model_dump(exclude={"seconds"})


def test_old_manifests_say_drift_not_recorded_and_maps_need_an_explainer(classified: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(classified, root)
    store = LocalStore(root)
    version = read_card(store, "cs_resnet_tiny").version
    key = f"catalogs/{BATCHES[1]}/{version}/_manifest.json"
    old = {k: v for k, v in json.loads(store.read_bytes(key)).items() if k != "drift"}
    store.write_bytes(key, json.dumps(old).encode())
    config = ReportConfig(store=str(root), model="cs_resnet_tiny", per_class=1, uncertain=2)
    with pytest.raises(ValueError, match="need an explainer"):
        write_report(config)
    summary = write_report(config.model_copy(update={"explain": False}))
    assert Path(summary.out) == root / "exports" / f"cs_resnet_tiny-{version}-report.html"
    html = Path(summary.out).read_text()
    assert "not recorded" in html
    assert summary.explained is None
    assert 'title="where the model looked"' not in html  # no map to link to


def test_the_explain_module_maps_the_gallery(classified: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    summary = write_report(
        ReportConfig(store=str(classified), model="cs_resnet_tiny", out=str(out), per_class=1, uncertain=3),
        explainer=explain_keys,
    )
    shown = len({*re.findall(r'href="#(explain-[^"]+)"', out.read_text())})
    assert summary.explained == shown - 1 > 0  # the deleted image has no map


def test_the_command_writes_the_report_and_says_where(classified: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    args = ["report", "--store", str(classified), "--model", "cs_resnet_tiny", "--out", str(out), "--no-explain"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.search(rf"-> {re.escape(str(out))} \(\d+\.\d s\)", result.output)
    assert 'id="explain"' not in out.read_text()


def test_without_maps_the_command_loads_no_torch(classified: Path, tmp_path: Path) -> None:
    code = (
        "import sys\nfrom galaxy_models.cli import app\n"
        "code = app(sys.argv[1:], standalone_mode=False)\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch', code)\n"
    )
    args = ["report", "--store", str(classified), "--model", "cs_resnet_tiny", "--out", str(tmp_path / "r.html")]
    result = subprocess.run(
        [sys.executable, "-c", code, *args, "--no-explain"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.stdout.strip().endswith("no torch 0"), result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_such_model"], "no model 'no_such_model'"),
        (["--out", "{tmp}"], "is a directory; name a .html file in it"),
        (["--out", "{tmp}/report.pdf"], "name a .html file, not '{tmp}/report.pdf'"),
        (["--model", "cs_resnet_tiny@"], "nothing after '@'"),
    ],
    ids=["unknown-model", "out-is-a-directory", "out-not-html", "bad-reference"],
)
def test_the_command_turns_mistakes_into_one_line(
    trained_store: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["report", "--store", str(trained_store), "--model", "cs_resnet_tiny", *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ")
    assert result.output.count("\n") == 1
    assert message.replace("{tmp}", str(tmp_path)) in result.output


def test_a_store_without_catalogs_or_no_store_is_a_one_line_error(trained_store: Path, tmp_path: Path) -> None:
    no_catalogs = runner.invoke(app, ["report", "--store", str(trained_store), "--model", "cs_resnet_tiny"])
    assert no_catalogs.exit_code == 2
    assert "no complete catalog for cs_resnet_tiny/" in no_catalogs.output
    assert "run classify first" in no_catalogs.output
    missing = runner.invoke(app, ["report", "--store", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.html")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output


def test_thumbnails_are_small_jpegs() -> None:
    data = thumbnail_jpeg(Image.new("RGB", (224, 224), (10, 20, 30)), 96)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("JPEG", (96, 96))
