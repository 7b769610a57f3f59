"""The inspector in a real headless browser: Debian's Chromium driven by Playwright.

The browser is the system's /usr/bin/chromium (`.ci/run` installs it with apt); nothing is
downloaded at test time. Every request the page makes is routed through `guard`, which lets only
the local server (or the export's own file://) through and records anything else, and each test
ends by asserting that nothing else was asked for. Where Chromium is missing the tests fail under
CI (CI=true) and skip elsewhere, each listed with the reason in pytest's summary.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from inspector_helpers import (  # noqa: F401  (run, server, teacher_run are fixtures)
    FAILED_TEACHER_ID, HOSTILE_MEMBER, HOSTILE_TEACHER, NO_TEACHER_ID, TEACHER_GAPS, TEACHER_ID,
    TEACHER_STEP, run, server, serving, teacher_run)

from slipstream.inspector import demo
from slipstream.inspector.export import export_html
from slipstream.inspector.query import parse_query
from slipstream.inspector.store import RunStore

CHROMIUM = os.environ.get("SLIPSTREAM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _require_chromium() -> None:
    missing = not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists()
    if missing or not _has_playwright():
        reason = f"browser tests need {CHROMIUM} (apt-get install chromium) and playwright"
        # Under CI (CI=true from .ci/run, or any CI service's CI=1) a missing browser fails.
        # Elsewhere it skips; `pytest -ra` (pyproject.toml's addopts) lists each with its reason.
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(reason)
        pytest.skip(reason)


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def browser():
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


class Guarded:
    """A page whose every request is checked; `foreign` lists any that tried to leave."""

    def __init__(self, browser, allowed_netloc: str | None) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.foreign: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.route("**/*", self._route)
        self._allowed = allowed_netloc

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _route(self, route) -> None:
        url = urlsplit(route.request.url)
        local = (url.scheme == "file") or (url.scheme == "http" and url.netloc == self._allowed)
        if local or url.scheme in ("data", "blob"):
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        # A new fragment on the same document re-renders without a reload: wait for it. (A
        # selector, not wait_for_function: the page's CSP forbids the eval that would need.)
        fragment = urlsplit(url).fragment
        fragment = "#" + fragment if fragment else ""
        quoted = fragment.replace("\\", "\\\\").replace('"', '\\"')
        self.page.wait_for_selector(f'body[data-rendered-hash="{quoted}"]', state="attached")

    def check_clean(self) -> None:
        assert self.foreign == [], self.foreign
        assert self.dialogs == [], self.dialogs
        assert self.errors == [], self.errors
        self.page.close()


@pytest.fixture()
def page(browser, server):
    guarded = Guarded(browser, f"127.0.0.1:{server.server_address[1]}")
    guarded.base = server.url
    yield guarded
    guarded.check_clean()


def _expected_gap_colour(gap: float) -> str:
    """The documented gap scale (static/tokens.js): log10 |gap| from 1e-8 to 1 over three
    stops; computed here independently of the page."""
    stops = [(0.0, (255, 247, 188)), (0.5, (254, 153, 41)), (1.0, (153, 52, 4))]
    return _on_scale(stops, min(1.0, max(0.0, (math.log10(abs(gap)) + 8) / 8)))


def _on_scale(stops, t: float) -> str:
    """The CSS colour at position t of a piecewise-linear scale of (position, rgb) stops, rounded
    as the page rounds."""
    for (p0, c0), (p1, c1) in zip(stops, stops[1:]):
        if t <= p1:
            f = (t - p0) / (p1 - p0)
            r, g, b = (math.floor(a + (b_ - a) * f + 0.5) for a, b_ in zip(c0, c1))
            return f"rgb({r}, {g}, {b})"
    raise AssertionError("unreachable")


def _expected_teacher_colour(gap: float) -> str:
    """The documented teacher-gap scale (static/tokens.js): pink (197, 27, 125) through white
    (247, 247, 247) to green (77, 146, 33), at 0.5 + sign * (log10 |gap| + 2) / 6, |gap| <= 0.01
    white, computed here independently of the page."""
    stops = [(0.0, (197, 27, 125)), (0.5, (247, 247, 247)), (1.0, (77, 146, 33))]
    reach = 0.0 if abs(gap) <= 0.01 else min(1.0, (math.log10(abs(gap)) + 2) / 3)
    return _on_scale(stops, 0.5 + math.copysign(reach, gap) / 2)


def _tooltip_of(guarded, token) -> dict[str, str]:
    token.hover()
    tooltip = guarded.page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    return dict(tooltip.locator(".tip-row").evaluate_all(
        "rows => rows.map(r => [r.children[0].textContent, r.children[1].textContent])"))


def test_the_teacher_view_colours_tokens_by_the_teacher_gap(browser, teacher_run):
    with serving(teacher_run) as server:
        guarded = Guarded(browser, f"127.0.0.1:{server.server_address[1]}")
        base = server.url + f"#view=sample&step={TEACHER_STEP}&id="
        guarded.open(base + TEACHER_ID + "&color=teacher")
        tokens = guarded.page.locator("#tokens .tok")
        colours = tokens.evaluate_all(
            "spans => spans.map(s => getComputedStyle(s).backgroundColor)")
        assert colours == [_expected_teacher_colour(g) for g in TEACHER_GAPS]
        assert len(set(colours)) == 4                         # green, pink, white, green
        legend = guarded.page.locator("#legend").inner_text()
        assert "teacher gap (teacher − student logprob)" in legend
        assert "green: the teacher likes the token more than the student" in legend
        values = _tooltip_of(guarded, tokens.nth(1))
        assert values["teacher logprob"] == "-2" and values["student logprob (trainer)"] == "-0.5"
        assert values["teacher gap (teacher − student)"] == "-1.5 (the teacher likes it less)"
        assert values["teacher top-1"] == "id 8 (not the generated token), logprob -0.1"
        assert values["member alpha (weight 0.75)"] == "-1.5"
        # The hostile member name is text, its bidi override shown as an escape.
        assert values[f"member {HOSTILE_MEMBER[:-1]}\\u202e (weight 0.25)"] == "-3"
        assert HOSTILE_TEACHER in guarded.page.locator(".chips").inner_text()
        # No teacher scores: no teacher colouring offered, and the page says why.
        guarded.open(base + NO_TEACHER_ID + "&color=teacher")
        offered = guarded.page.locator("#color-mode option").evaluate_all(
            "options => options.map(o => o.value)")
        assert offered == ["gap", "weight", "version", "surprisal"]
        assert "No teacher scores for this sample" in \
            guarded.page.locator("#teacher-missing").inner_text()
        guarded.open(base + FAILED_TEACHER_ID)              # the teacher failed: it says so
        assert guarded.page.locator("#color-mode option[value='teacher']").is_disabled()
        assert "context function raised" in guarded.page.locator(".chips").inner_text()
        guarded.check_clean()


def test_sorting_by_gap_puts_the_known_sample_first(page):
    page.open(page.base + "#view=samples")
    page.page.click("a[data-sort='max_gap']")           # ascending
    page.page.click("a[data-sort='max_gap']")           # descending
    page.page.wait_for_selector("th.sorted.desc a[data-sort='max_gap']")
    first = page.page.locator("table.samples tbody tr").first
    assert first.get_attribute("data-id") == demo.DEMO_LARGEST_GAP_ID
    assert "sort=max_gap" in page.page.evaluate("location.hash")   # the state is in the URL


def test_a_known_token_has_the_expected_colour_tooltip_and_detail(page, run):
    store = RunStore(run)
    row = store.find_row(demo.DEMO_LARGEST_GAP_ID)
    record = store.sample(row["id"], row["step"])
    i = demo.DEMO_LARGEST_GAP_TOKEN
    gap = record["trainer_logprobs_T"][i] - record["sample"]["sampler_logprobs_T"][i]
    page.open(page.base + f"#view=sample&id={row['id']}&step={row['step']}&color=gap")
    token = page.page.locator(f"#tokens .tok[data-i='{i}']")
    colour = token.evaluate("node => getComputedStyle(node).backgroundColor")
    assert colour == _expected_gap_colour(gap)
    token.hover()
    tooltip = page.page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    values = dict(tooltip.locator(".tip-row").evaluate_all(
        "rows => rows.map(r => [r.children[0].textContent, r.children[1].textContent])"))
    assert float(values["gap (trainer - sampler)"]) == gap       # every digit, exactly
    assert float(values["sampler logprob"]) == record["sample"]["sampler_logprobs_T"][i]
    assert values["weight version"] == f"{record['sample']['versions_T'][i]} (lag 0)"
    token.click()
    assert f"token #{i}" in page.page.locator("#token-detail").inner_text()
    exact = page.page.locator("#tokens .tok.exact0")
    for k in range(exact.count()):                               # exact zeros drawn white
        assert exact.nth(k).evaluate("n => getComputedStyle(n).backgroundColor") == \
            "rgb(255, 255, 255)"
    page.page.select_option("#color-mode", "weight")
    page.page.wait_for_selector("body[data-rendered-hash*='color=weight']", state="attached")
    assert "importance weight" in page.page.locator("#legend").inner_text()


def test_the_version_change_is_marked_once_where_it_happens(page, run):
    row = RunStore(run).find_row(demo.DEMO_TWO_VERSION_ID)
    page.open(page.base + f"#view=sample&id={row['id']}&step={row['step']}&color=version")
    marks = page.page.locator("#tokens .tok.vchange")
    assert marks.count() == 1
    assert marks.first.get_attribute("data-i") == str(demo.DEMO_VERSION_CHANGE_TOKEN)
    assert marks.first.get_attribute("data-version") == f"v{row['version_max']}"
    masked = page.page.locator("#tokens .tok.masked")
    for k in range(masked.count()):                    # masked tokens are kept off the scale
        assert masked.nth(k).evaluate("n => n.style.backgroundColor") == ""


def test_hostile_text_renders_literally_and_opens_no_dialog(page, run):
    row = RunStore(run).find_row(demo.DEMO_HOSTILE_ID)
    page.open(page.base + f"#view=sample&id={row['id']}&step={row['step']}")
    assert page.page.locator("#tokens").text_content() == demo.DEMO_HOSTILE_TEXT
    page.open(page.base + "#view=samples&text=script")
    assert demo.DEMO_HOSTILE_TEXT in page.page.locator("table.samples tbody").inner_text()
    page.open(page.base + f"#view=group&id={row['group']}")
    assert demo.DEMO_HOSTILE_TEXT in page.page.locator("#view-group").inner_text()
    page.page.wait_for_timeout(300)
    assert page.page.evaluate("document.querySelectorAll('main img, main script').length") == 0


def test_control_and_bidi_characters_show_as_escapes(browser, tmp_path):
    from factories import make_sample

    from slipstream.buffer.records import TrainedSample
    from slipstream.buffer.rollout_log import write_step

    run = demo.make_demo_run(tmp_path / "ctl")
    texts = ("red\x1b[31m", "\u202eevil", "\x07", "<b>x</b>")
    sample = dataclasses.replace(make_sample("g9", 0, versions=(6,) * 4), token_texts_T=texts,
                                 completion_text="".join(texts))
    write_step(run / "rollouts", 7, [TrainedSample(sample, 7, 6, 0.0, (-0.5,) * 4)])
    with serving(run) as server:
        guarded = Guarded(browser, f"127.0.0.1:{server.server_address[1]}")
        guarded.open(server.url + "#view=sample&id=g9-0&step=7")
        shown = guarded.page.locator("#tokens .tok").evaluate_all(
            "spans => spans.map(s => s.textContent)")
        assert shown == ["red\\x1b[31m", "\\u202eevil", "\\x07", "<b>x</b>"]
        guarded.check_clean()


def test_clicking_a_curve_point_opens_that_steps_samples(page):
    page.open(page.base + "#view=overview")
    page.page.locator("figure.chart").first.locator("circle[data-step='3']").click()
    page.page.wait_for_selector("body[data-rendered-hash*='step_min=3']", state="attached")
    steps = page.page.locator("table.samples tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.step)")
    assert steps and set(steps) == {"3"}


def test_group_and_buffer_views(page):
    page.open(page.base + f"#view=group&id={demo.DEMO_ZERO_VARIANCE_GROUP}")
    assert page.page.locator("#zero-variance").is_visible()
    assert page.page.locator(".sibling").count() == demo.DEMO_GROUP_SIZE
    page.open(page.base + "#view=buffer&snapshot=snapshot-step000002.jsonl")
    assert page.page.locator("#waiting tbody tr").count() == 8
    assert demo.DEMO_EVICTED_GROUP in page.page.locator("#evictions").inner_text()


def test_appending_a_step_shows_new_rows(browser, tmp_path):
    run = demo.make_demo_run(tmp_path / "live")
    with serving(run) as server:
        guarded = Guarded(browser, f"127.0.0.1:{server.server_address[1]}")
        guarded.open(server.url + "#view=samples&sort=step&desc=1")
        assert guarded.page.locator("tr[data-step='7']").count() == 0
        demo.append_demo_step(run, 7)
        guarded.page.wait_for_selector("tr[data-step='7']", timeout=8_000)
        assert "56 samples" in guarded.page.locator("#live").inner_text()
        guarded.check_clean()


def test_deterministic_banner_counts_nonzero_gaps(browser, tmp_path):
    run = demo.make_demo_run(tmp_path / "det", deterministic=True)
    with serving(run) as server:
        guarded = Guarded(browser, f"127.0.0.1:{server.server_address[1]}")
        guarded.open(server.url)
        banner = guarded.page.locator("#banner")
        assert banner.is_visible()
        assert banner.inner_text().startswith(
            f"Deterministic run: {demo.DEMO_DETERMINISTIC_NONZERO} of ")
        guarded.page.click("#banner-link")
        guarded.page.wait_for_selector("th.sorted a[data-sort='det_nonzero']")
        first = guarded.page.locator("table.samples tbody tr").evaluate_all(
            "rows => rows.slice(0, 3).map(r => r.dataset.id)")
        assert set(first[:2]) == {"g0000000-0", demo.DEMO_LARGEST_GAP_ID}   # the planted two
        guarded.check_clean()


def test_the_html_export_works_from_file_with_no_network(browser, run, tmp_path):
    out, count, _ = export_html(RunStore(run), tmp_path / "export.html", parse_query({}))
    guarded = Guarded(browser, None)
    guarded.open(out.resolve().as_uri() + "#view=samples&sort=max_gap&desc=1")
    rows = guarded.page.locator("table.samples tbody tr")
    assert rows.first.get_attribute("data-id") == demo.DEMO_LARGEST_GAP_ID
    rows.first.locator("a.sample-link").click()
    guarded.page.wait_for_selector("#tokens .tok")
    assert guarded.page.locator("#tokens .tok").count() == \
        RunStore(run).find_row(demo.DEMO_LARGEST_GAP_ID)["len"]
    hostile = RunStore(run).find_row(demo.DEMO_HOSTILE_ID)
    guarded.open(out.resolve().as_uri() +
                 f"#view=sample&id={hostile['id']}&step={hostile['step']}")
    assert guarded.page.locator("#tokens").text_content() == demo.DEMO_HOSTILE_TEXT
    guarded.open(out.resolve().as_uri() + "#view=buffer")
    assert demo.DEMO_EVICTED_GROUP in guarded.page.locator("#evictions").inner_text()
    assert "static export" in guarded.page.locator("#live").inner_text()
    guarded.check_clean()


def test_a_multi_turn_samples_env_turn_is_set_apart(browser, tmp_path):
    from factories import make_sample

    from slipstream.buffer.records import TrainedSample
    from slipstream.buffer.rollout_log import write_step

    run_dir = demo.make_demo_run(tmp_path / "run")
    env_T = (False, True, True, False)                 # tokens 1 and 2: the env's turn
    sample = dataclasses.replace(make_sample("m0", 0, versions=(2, 2, 2, 2)), turns=2,
                                 env_tokens_T=env_T, sampler_logprobs_T=(-0.5, 0.0, 0.0, -0.5))
    write_step(run_dir / "rollouts", 9, [TrainedSample(
        sample, 9, 2, 0.5, (-0.25, -4.0, -3.0, -0.5), importance_weights_T=(1.0, 0.0, 0.0, 1.0),
        masked_T=(False, True, True, False), mask_reasons_T=("", "env", "env", ""))])
    with serving(run_dir) as server:
        guarded = Guarded(browser, f"127.0.0.1:{server.server_address[1]}")
        guarded.open(server.url + "#view=sample&step=9&id=m0-0&color=gap")
        tokens = guarded.page.locator("#tokens .tok")
        classes = tokens.evaluate_all("spans => spans.map(s => s.classList.contains('env'))")
        assert classes == list(env_T)
        backgrounds = tokens.evaluate_all("spans => spans.map(s => s.style.backgroundColor)")
        assert [b == "" for b in backgrounds] == list(env_T)      # env tokens: on no scale
        values = _tooltip_of(guarded, tokens.nth(1))
        assert values["written by"].startswith("the env") and "sampler logprob" not in values
        guarded.check_clean()
