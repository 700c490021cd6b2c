"""The group report renders in a real browser: every figure loads, no console errors.

Uses Debian's ``chromium`` (installed by .ci/run through apt) driven by playwright; playwright's
own browser download is not used.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroharmony_bids.reports import write_group_report, write_participant_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is absent (Debian package 'chromium'; .ci/run installs it)",
)

IMAGES_JS = """
imgs => imgs.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                        height: i.naturalHeight}))
"""


def _render(html_path: Path, user_data: Path) -> tuple[list[dict], list[str], str]:
    """Open ``html_path``; return the state of every <img>, console/page errors and the title."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    errors: list[str] = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data),  # a fresh profile each time
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", IMAGES_JS)
            title = page.title()
        finally:
            context.close()
    return images, errors, title


@pytest.mark.slow
def test_group_report_renders_in_chromium(tmp_path):
    from test_reports import report_inputs

    raw, harmonized, model, info, failed = report_inputs()
    report = write_group_report(
        tmp_path / "group_report.html", raw, harmonized, model, failed, model_info=info
    )
    images, errors, title = _render(report, tmp_path / "profile")
    assert title == "Neuroharmony group report"
    assert len(images) >= 4
    broken = [i["alt"] for i in images if not i["complete"] or i["width"] == 0]
    assert broken == []
    assert errors == []


def test_participant_report_renders_in_chromium(tmp_path):
    from test_reports import report_inputs

    raw, harmonized, model, info, _ = report_inputs()
    report = write_participant_report(
        tmp_path / "sub.html", raw.iloc[-1], harmonized.iloc[-1], model, model_info=info
    )
    images, errors, _ = _render(report, tmp_path / "profile")
    assert len(images) == 2 and all(i["width"] > 0 for i in images)
    assert errors == []


def test_checker_catches_a_broken_figure(tmp_path):
    """The check is real: a corrupt embedded image is reported as broken."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body>"
        '<img alt="ok" src="data:image/png;base64,'
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
        '"><img alt="bad" src="data:image/png;base64,AAAA"></body></html>'
    )
    images, _, _ = _render(page, tmp_path / "profile")
    state = {i["alt"]: i["width"] for i in images}
    assert state["ok"] == 1 and state["bad"] == 0
