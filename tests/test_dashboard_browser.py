"""The dashboard in a real browser: the system's Chromium, driven by Playwright, against a real
``airlock dashboard`` process serving a workspace with real deploys.

Screenshots are saved under ``$AIRLOCK_TEST_ARTIFACTS`` (or a temporary folder); the test prints
where. Without /usr/bin/chromium these tests are skipped, except under ``CI=true``, where they
fail: CI must run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_dashboard import TOKEN, Dashboard, Workspace, _approvals, build_workspace

CHROMIUM = Path("/usr/bin/chromium")
NARROW = {"width": 640, "height": 900}  # about 80 columns of text

if not CHROMIUM.exists() and os.environ.get("CI") != "true":
    pytest.skip("no /usr/bin/chromium here (CI=true makes this a failure)", allow_module_level=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    built, factory = build_workspace(tmp_path_factory.mktemp("browser"))
    try:
        yield built
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def dashboard(workspace: Workspace) -> Iterator[Dashboard]:
    served = Dashboard(workspace.project)
    try:
        yield served
    finally:
        assert "Traceback" not in served.stop()


@pytest.fixture(scope="module")
def browser(dashboard: Dashboard) -> Iterator[Any]:
    """Chromium, started after the workspace is built (Playwright's sync API keeps an event
    loop running in this thread, where the library's deploys could not run theirs)."""
    assert CHROMIUM.exists(), "CI=true: the browser tests need /usr/bin/chromium"
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("AIRLOCK_TEST_ARTIFACTS")
    folder = Path(chosen) / "dashboard" if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {folder}")
    return folder


def _fits(page: Any) -> bool:
    """No horizontal scrolling of the page as a whole."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_every_page_loads_and_reads_at_80_columns(
    browser: Any, dashboard: Dashboard, workspace: Workspace, shots: Path
) -> None:
    for width, viewport in (("wide", {"width": 1280, "height": 900}), ("narrow", NARROW)):
        page = browser.new_page(viewport=viewport)
        errors: list[str] = []
        page.on("pageerror", lambda exc, seen=errors: seen.append(str(exc)))
        for name, path in (
            ("environments", "/"),
            ("staging", "/environments/staging"),
            ("timeline", "/timeline"),
            ("releases", "/releases"),
            ("release-v2", f"/releases/{workspace.v2}"),
            ("release-v3", f"/releases/{workspace.v3}"),
            ("metrics", "/metrics"),
        ):
            answer = page.goto(dashboard.url + path.lstrip("/"))
            assert answer is not None and answer.ok, (path, answer and answer.status)
            page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
            assert _fits(page), f"{path} scrolls sideways at {viewport['width']} px"
        assert errors == []
        page.close()


def test_from_an_environment_to_a_release_and_its_evidence(
    browser: Any, dashboard: Dashboard, workspace: Workspace, shots: Path
) -> None:
    page = browser.new_page(viewport=NARROW)
    page.goto(dashboard.url)
    page.locator("section.env[data-env=staging] h2 a").click()
    page.wait_for_url("**/environments/staging")
    assert "exited with code 3" in page.locator("#deployments").inner_text()
    page.locator("#status a.release-link").click()
    page.wait_for_url(f"**/releases/{workspace.v2}")
    assert page.locator("h1").inner_text() == "Release v2"
    page.locator("nav.toc a[href='#bake']").click()
    charts = page.locator("#bake figure.chart svg")
    assert charts.count() >= 3 and charts.first.is_visible()
    assert page.locator("#bake polyline").count() >= 3
    assert "GO" in page.locator("#gonogo .verdict").first.inner_text()
    page.screenshot(path=str(shots / "click-through-release.png"), full_page=True)
    page.close()


def test_approving_needs_the_token_and_shows_up_live(
    browser: Any, dashboard: Dashboard, workspace: Workspace, shots: Path
) -> None:
    """Refused without the token; with it, the approval is recorded, and another open copy of
    the page shows it without a reload (server-sent events)."""
    watcher = browser.new_page(viewport=NARROW)
    watcher.goto(dashboard.url + f"releases/{workspace.v2}")
    watcher.locator("body[data-live-state=connected]").wait_for(state="attached", timeout=15_000)

    page = browser.new_page(viewport=NARROW)
    page.goto(dashboard.url + f"releases/{workspace.v2}")
    form = page.locator("form#approve")
    form.locator("select[name=env]").select_option("production")
    form.locator("input[name=by]").fill("alice")
    form.locator("input[name=note]").fill("bake looks flat")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert "needs the dashboard's token" in page.locator(".problem").inner_text()
    assert _approvals(workspace.project, "v2") == {}
    page.screenshot(path=str(shots / "approve-refused.png"), full_page=True)

    form = page.locator("form#approve")
    assert form.locator("input[name=by]").input_value() == "alice"  # kept for the retry
    form.locator("input[name=token]").fill(TOKEN)
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/releases/*?done=*")
    assert "alice approved it for production" in page.locator(".done").inner_text()
    assert [a["approver"] for a in _approvals(workspace.project, "v2")["production"]] == ["alice"]
    page.screenshot(path=str(shots / "approve-accepted.png"), full_page=True)

    watcher.locator("#approval-list li[data-env=production]").wait_for(timeout=15_000)
    assert "alice" in watcher.locator("#approval-list").inner_text()
    watcher.screenshot(path=str(shots / "approval-live.png"), full_page=True)
    watcher.close()
    page.close()
