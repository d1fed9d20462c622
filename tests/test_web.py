"""The web page in a real headless Chromium (Debian's, driven by Playwright): search, heat strips,
clip captions and an upload. Skips when Playwright or a chromium binary is missing."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
httpx = pytest.importorskip("httpx")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "web.png"
QUERY = "a red ball falling"


def test_search_heat_strips_and_upload_in_a_browser(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    api = httpx.get(served["url"] + "/api/search", params={"q": QUERY, "k": 5}, timeout=30).json()
    clip = served["media"] / "clips" / "synth00002.mp4"
    uploaded = httpx.post(served["url"] + "/api/caption/upload", files={"file": ("c.mp4", clip.read_bytes())},
                          timeout=30).json()["caption"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(served["url"])
            expect(page.locator("#health")).to_contain_text("12 clips indexed")

            page.get_by_label("Query").fill(QUERY)
            page.get_by_label("Results").fill("5")
            page.get_by_role("button", name="Search").click()
            hits = page.locator("#results > li")
            expect(hits).to_have_count(5)
            titles = hits.locator(".hit-title").all_text_contents()
            assert [t.split(" ")[1] for t in titles] == [h["video_id"] for h in api["hits"]]  # the API's ranking
            first = hits.first
            words = [a["word"] for a in api["hits"][0]["alignments"]]
            assert first.locator(".heat-row .word").all_text_contents() == words and words
            expect(first.locator(".heat").first.locator(".cell")).to_have_count(8)
            colours = first.locator(".heat").first.locator(".cell").evaluate_all(
                "cells => cells.map(c => getComputedStyle(c).backgroundColor)")
            assert len(set(colours)) > 1  # the strip shows where the word matches, not a flat colour
            page.wait_for_function("[...document.querySelectorAll('img.strip')].every(i => i.complete && i.naturalWidth > 0)")
            src = first.locator("video").get_attribute("src")
            assert src.startswith(api["hits"][0]["video_url"] + "#t=0")
            first.get_by_role("button", name=f"caption {api['hits'][0]['video_id']}").click()
            expect(first.locator("p.caption")).to_contain_text("“", timeout=20_000)

            page.get_by_label("Short video (mp4, mov or WebM)").set_input_files(str(clip))
            page.get_by_role("button", name="Caption", exact=True).click()
            expect(page.locator("#upload-caption")).to_have_text(f"“{uploaded}”", timeout=20_000)
            expect(page.locator("#upload-status")).to_contain_text("8 features")
            assert not errors, errors

            page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
            if not SCREENSHOT.exists() or os.environ.get("VIDLANG_UPDATE_SCREENSHOT") == "1":
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tmp_path / "web.png", SCREENSHOT)
        finally:
            browser.close()


def test_errors_show_in_the_page(served):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(served["url"])
            page.get_by_label("Query").fill("ball")
            page.get_by_label("Results").fill("500")  # over the server's bound: its 422 message is shown
            page.locator("#search-form").evaluate("f => f.noValidate = true")
            page.get_by_role("button", name="Search").click()
            expect(page.locator("#search-status")).to_have_class("muted error")
            expect(page.locator("#search-status")).to_contain_text("k")
            notes = served["root"] / "not-a-video.mp4"
            notes.write_text("plain text")
            page.get_by_label("Short video (mp4, mov or WebM)").set_input_files(str(notes))
            page.get_by_role("button", name="Caption", exact=True).click()
            expect(page.locator("#upload-status")).to_contain_text("not an mp4/mov or WebM")
        finally:
            browser.close()


def test_a_spoken_match_shows_what_was_said(spoken_index):
    from helpers import SPOKEN_QUERY, SPOKEN_SAID, live_server
    from playwright.sync_api import expect, sync_playwright

    from vidlang.serve.app import create_app

    with live_server(create_app(spoken_index)) as url:
        n = len(spoken_index)  # every clip: the tiny model's visual ranking is arbitrary
        api = httpx.get(url + "/api/search", params={"q": SPOKEN_QUERY, "k": n}, timeout=30).json()["hits"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(url)
                page.get_by_label("Query").fill(SPOKEN_QUERY)
                page.get_by_label("Results").fill(str(n))
                page.get_by_role("button", name="Search").click()
                hits = page.locator("#results > li")
                expect(hits).to_have_count(n)
                said = hits.nth(api.index(next(h for h in api if h["video_id"] == "video1")))
                expect(said.locator(".spoken")).to_be_visible()
                expect(said.locator(".spoken")).to_have_text(f"said 0.5 s–3.0 s: “{SPOKEN_SAID['video1'][0][2]}”")
                expect(said.locator(".scores")).to_contain_text("spoken ")
                silent = [i for i, h in enumerate(api) if h["spoken"] is None]
                for i in silent:  # a clip without speech shows no spoken line
                    expect(hits.nth(i).locator(".spoken")).to_be_hidden()
            finally:
                browser.close()
