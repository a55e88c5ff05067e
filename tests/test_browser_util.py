"""The headless-Chromium helper (tests/browser.py) on small handmade pages."""

import base64
import struct
import zlib

import pytest

from browser import CHROMIUM, inspect_page, screenshot

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_png(width: int, height: int, rgb=(200, 30, 30)) -> bytes:
    """A valid solid-colour 8-bit RGB PNG, built by hand so the test needs no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))  # filter byte 0 per row
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def data_uri(payload: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(payload).decode()


def page(tmp_path, body: str, title: str = "handmade"):
    path = tmp_path / "report.html"
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{body}</body></html>",
        encoding="utf-8",
    )
    return path


def test_section_above_images_and_images_decoded(tmp_path):
    path = page(
        tmp_path,
        f"""
        <h1>Report</h1>
        <section id="verdicts"><h2>Verdicts</h2><p>resnet18 beats plain18.</p></section>
        <h2>Figures</h2>
        <figure><img alt="curves" src="{data_uri(tiny_png(64, 32))}"></figure>
        <figure><img alt="gradflow" src="{data_uri(tiny_png(20, 50, (30, 30, 200)))}"></figure>
    """,
        title="A & B <report>",
    )
    info = inspect_page(path, "#verdicts")
    assert info["title"] == "A & B <report>"  # survives the HTML escaping of --dump-dom
    target, images = info["target"], info["images"]
    assert target["found"] and target["bottom"] > target["top"]
    assert len(images) == 2
    assert all(im["src"].startswith("data:image/png;base64,") and len(im["src"]) == 40 for im in images)
    assert target["bottom"] <= images[0]["top"] < images[1]["top"]
    for im in images:
        assert im["complete"] and im["naturalWidth"] > 0
    assert [(im["naturalWidth"], im["naturalHeight"]) for im in images] == [(64, 32), (20, 50)]


def test_missing_selector_is_reported_not_found(tmp_path):
    info = inspect_page(page(tmp_path, "<p>no sections here</p>"), "#verdicts")
    assert info["target"] == {"found": False, "top": None, "bottom": None}
    assert info["images"] == []


def test_broken_image_has_no_natural_width(tmp_path):
    path = page(
        tmp_path,
        f"""
        <img alt="good" src="{data_uri(tiny_png(8, 8))}">
        <img alt="broken" src="{data_uri(b"this is not a PNG at all" * 4)}">
    """,
    )
    good, broken = inspect_page(path, "img")["images"]
    assert good["naturalWidth"] == 8
    # A failed image is 'complete' too (loading has finished); only its size shows the failure.
    assert broken["naturalWidth"] == 0 and broken["naturalHeight"] == 0


def test_screenshot_writes_png(tmp_path):
    path = page(tmp_path, f"<section id='verdicts'>hello</section><img src='{data_uri(tiny_png(40, 40))}'>")
    out = screenshot(path, tmp_path / "shots" / "page.png", width=400, height=300)
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])  # IHDR follows the signature
    assert (width, height) == (400, 300)
