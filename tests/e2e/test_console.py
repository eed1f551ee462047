"""The admin console (/admin) driven in headless Chromium, against the e2e session's
service: sign in, a program's charts drawn with its numbers, a member found, a redemption
cancelled, a review approved, the rule diff, what a viewer is not offered, the phone
layout's menu; the reports (a table, a CSV download) and the overview's report charts; an
experiment started, its results and its end; a what-if simulation polled to its result.

The browser is Debian's `chromium` (`apt-get install chromium`; .ci/run installs it),
driven by Playwright for Python: never `playwright install`, which downloads a browser.
A missing browser fails these tests (it is not a reason to skip them).

Screenshots of each page, laptop and phone sized, go to tests/artifacts/console/
(git-ignored; POINTS_TEST_ARTIFACTS moves them).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.e2e.conftest import ADMIN_KEY, Service

CHROMIUM = Path(os.environ.get("POINTS_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = (
    Path(os.environ.get("POINTS_TEST_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
    / "console"
)
LAPTOP = {"width": 1366, "height": 820}
PHONE = {"width": 390, "height": 844}
# Playwright's wait for any one thing the page should show (ms).
SHOWN_TIMEOUT_MS = 15_000

TIERS = {
    "basis": "lifetime",
    "tiers": [
        {"name": "member", "threshold": 0},
        {"name": "silver", "threshold": 1000},
        {"name": "gold", "threshold": 5000},
    ],
}
RULE = {
    "id": "order_points",
    "event_type": "order",
    "condition": None,
    "award": {"type": "per_amount", "attribute": "amount", "rate": "0.01", "rounding": "down"},
    "priority": 10,
    "combine": "stack",
}
CHECK_IN = {
    "id": "check_in",
    "event_type": "check_in",
    "condition": None,
    "award": {"type": "fixed", "points": 10},
    "priority": 20,
    "combine": "stack",
}
# Earned through order events (rule v2: 2 points per 100 minor units), which place the
# member in a tier; dave's points are a manual credit, which does not.
ORDERS = {"alice": 300_000, "bob": 75_000, "carol": 10_000}
EARNED = {"alice": 6000, "bob": 1500, "carol": 200, "dave": 4000}
TIER_OF = {"alice": "gold", "bob": "silver", "carol": "member", "dave": "member"}
REVIEW_ABOVE_POINTS = 3000
TV_COST_POINTS = 2000
# Half a cent a point since 2020: the liability report has money columns.
POINT_VALUE = {
    "currency": "EUR",
    "values": [{"from": "2020-01-01T00:00:00Z", "minor_units_per_point": "0.5"}],
}
# The experiment and simulation program's members: some before the experiment, some in it.
LAB_BEFORE = [f"early-{n}" for n in range(4)]
LAB_IN_EXPERIMENT = [f"trial-{n}" for n in range(8)]
LAB_ORDER_AMOUNT = 10_000
# A simulation's job runs as a Ray task: its first start in a session may take a while.
SIMULATION_TIMEOUT_MS = 90_000


class Shop:
    """The program the console is shown, made through the API."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.program = f"console-{secrets.token_hex(3)}"
        self.redemptions: dict[str, str] = {}
        self.review_id = ""

    async def build(self, http: httpx.AsyncClient) -> None:
        p = f"/v1/programs/{self.program}"

        async def ok(answer: Awaitable[httpx.Response]) -> dict[str, Any]:
            response = await answer
            assert response.status_code in (200, 201), response.text
            body: dict[str, Any] = response.json()
            return body

        policy = {
            "tiers": TIERS,
            "risk": {"review_above_points": REVIEW_ABOVE_POINTS},
            "point_value": POINT_VALUE,
        }
        await ok(http.put(p, json={"name": "Console shop", "policy": policy}))
        await ok(http.put(f"{p}/rules", json={"rules": [RULE]}))
        faster = {**RULE, "award": {**RULE["award"], "rate": "0.02"}}
        await ok(http.put(f"{p}/rules", json={"rules": [faster, CHECK_IN]}))
        rewards = (("mug", 100, 50), ("tv", TV_COST_POINTS, 5), ("voucher", 50, None))
        for reward, cost, stock in rewards:
            body = {"name": reward.title(), "cost_points": cost, "stock": stock}
            await ok(http.put(f"{p}/rewards/{reward}", json=body))
        now = datetime.now(UTC).isoformat()
        for member, amount in ORDERS.items():
            event = {"id": f"order-{member}", "member_id": member, "type": "order"}
            event |= {"occurred_at": now, "attributes": {"amount": amount}}
            earned = await ok(http.post(f"{p}/events", json=event))
            assert earned["points"] == EARNED[member], earned
        await ok(
            http.post(
                f"{p}/members/dave/credits",
                json={"points": EARNED["dave"], "reason": "welcome"},
                headers={"Idempotency-Key": "welcome-dave"},
            )
        )
        for member, reward in (("alice", "tv"), ("alice", "mug"), ("bob", "mug")):
            made = await ok(
                http.post(
                    f"{p}/redemptions",
                    json={"member_id": member, "reward_id": reward, "quantity": 1},
                    headers={"Idempotency-Key": f"redeem-{member}-{reward}"},
                )
            )
            assert made["status"] == "completed", made
            self.redemptions[f"{member}/{reward}"] = made["id"]
        held = await ok(
            http.post(
                f"{p}/members/dave/debits",
                json={"points": 3500, "reason": "gift card"},
                headers={"Idempotency-Key": "dave-gift-card"},
            )
        )
        assert held["status"] == "pending_review", held
        self.review_id = held["review_id"]


class Lab:
    """A program for experiments and simulations: rules v1 (1 point per 100 minor units)
    and v2 (2 points, and check-ins), and order events of a few members."""

    def __init__(self) -> None:
        self.program = f"lab-{secrets.token_hex(3)}"

    async def build(self, http: httpx.AsyncClient) -> None:
        p = f"/v1/programs/{self.program}"
        made = await http.put(p, json={"name": "Console lab", "policy": {"tiers": TIERS}})
        assert made.status_code in (200, 201), made.text
        faster = {**RULE, "award": {**RULE["award"], "rate": "0.02"}}
        for rules in ([RULE], [faster, CHECK_IN]):
            answer = await http.put(f"{p}/rules", json={"rules": rules})
            assert answer.status_code in (200, 201), answer.text
        await self.orders(http, LAB_BEFORE, "before")

    async def orders(self, http: httpx.AsyncClient, members: list[str], tag: str) -> None:
        now = datetime.now(UTC).isoformat()
        for member in members:
            event = {"id": f"{tag}-{member}", "member_id": member, "type": "order"}
            event |= {"occurred_at": now, "attributes": {"amount": LAB_ORDER_AMOUNT}}
            answer = await http.post(f"/v1/programs/{self.program}/events", json=event)
            assert answer.status_code in (200, 201), answer.text


@pytest.fixture(scope="module")
async def admin_http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, headers=service.headers, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
async def shop(service: Service, admin_http: httpx.AsyncClient) -> Shop:
    made = Shop(service)
    await made.build(admin_http)
    return made


@pytest.fixture(scope="module")
async def lab(admin_http: httpx.AsyncClient) -> Lab:
    made = Lab()
    await made.build(admin_http)
    return made


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.is_file(), (
        f"no Chromium at {CHROMIUM}: apt-get install --no-install-recommends chromium "
        "(.ci/run does), or set POINTS_CHROMIUM"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        await launched.close()


Open = Callable[..., Awaitable[Page]]


@pytest.fixture
async def open_console(browser: Browser, service: Service) -> AsyncIterator[Open]:
    """open_console(key=ADMIN_KEY, viewport=LAPTOP): a fresh tab signed in with `key`
    (None: not signed in); every dialog (confirm, prompt) is accepted."""
    contexts = []

    async def open_(key: str | None = ADMIN_KEY, viewport: dict[str, int] = LAPTOP) -> Page:
        # Reduced motion: the phone menu opens without its slide, so screenshots show it.
        context = await browser.new_context(viewport=viewport, reduced_motion="reduce")  # type: ignore[arg-type]
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(SHOWN_TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("dialog", _accept)
        await page.goto(service.url + "/admin")
        assert page.url.endswith("/admin/")
        if key is not None:
            await sign_in(page, key)
        page.errors = errors  # type: ignore[attr-defined]
        return page

    yield open_
    for context in contexts:
        await context.close()


async def _accept(dialog: Dialog) -> None:
    await dialog.accept("checked with the member" if dialog.type == "prompt" else None)


async def sign_in(page: Page, key: str) -> None:
    await page.fill("#api-key", key)
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#whoami")).not_to_be_empty()


async def shoot(page: Page, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def go(page: Page, hash_path: str) -> None:
    await page.evaluate("(h) => { location.hash = h; }", hash_path)


async def drawn(page: Page, name: str) -> dict[str, Any]:
    """The chart on canvas[data-chart=name] once drawn: its labels, its datasets' data,
    and how many of its pixels are painted."""
    canvas = f'canvas[data-chart="{name}"]'
    try:
        await page.wait_for_function(
            "(sel) => { const c = document.querySelector(sel); return c && Chart.getChart(c); }",
            arg=canvas,
        )
    except PlaywrightTimeout as timeout:
        await shoot(page, f"failed-chart-{name}")
        shown = await page.locator("#flash").inner_text()
        errors = page.errors  # type: ignore[attr-defined]
        raise AssertionError(
            f"chart {name} not drawn; shown {shown!r}; errors {errors}"
        ) from timeout
    result: dict[str, Any] = await page.evaluate(
        """(sel) => {
            const canvas = document.querySelector(sel);
            const chart = Chart.getChart(canvas);
            const {width, height} = canvas;
            const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
            let painted = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted++;
            return {labels: chart.data.labels, data: chart.data.datasets.map((s) => s.data),
                    painted, area: canvas.width * canvas.height};
        }""",
        canvas,
    )
    return result


async def test_sign_in_shows_a_refused_key_then_signs_in(open_console: Open) -> None:
    page = await open_console(key=None)
    await shoot(page, "sign-in-laptop")
    await page.fill("#api-key", "pts_nosuchkey_" + "x" * 36)
    await page.click("#sign-in button[type=submit]")
    problem = page.locator("#flash .problem")
    await expect(problem).to_have_attribute("data-code", "unauthorized")
    await expect(problem).to_contain_text("HTTP 401")
    await sign_in(page, ADMIN_KEY)
    await expect(page.locator("#whoami")).to_contain_text("admin")
    await expect(page.locator("#flash")).to_be_empty()
    # Signed in: the key is in this tab's sessionStorage only, and the nav offers keys.
    assert await page.evaluate("sessionStorage.getItem('points.console.key')") == ADMIN_KEY
    await expect(page.locator('#nav a[data-page="keys"]')).to_be_visible()
    await page.click("#sign-out")
    await expect(page.locator("#api-key")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('points.console.key')") is None


async def test_a_programs_overview_draws_each_chart_with_its_numbers(
    open_console: Open, shop: Shop, admin_http: httpx.AsyncClient
) -> None:
    books = (await admin_http.get(f"/v1/programs/{shop.program}/ledger/summary")).json()
    rewards = (await admin_http.get(f"/v1/programs/{shop.program}/rewards")).json()["items"]
    for viewport, size in (("laptop", LAPTOP), ("phone", PHONE)):
        page = await open_console(viewport=size)
        await page.click(f'a[data-program="{shop.program}"]')
        await expect(page.locator("h1")).to_contain_text("Console shop")
        flows = await drawn(page, "flows")
        expected = [books["flows"][k] for k in ("issued", "redeemed", "expired", "reversed")]
        assert flows["data"][0][:4] == expected and expected[0] == sum(EARNED.values())
        split = await drawn(page, "issued-split")
        assert split["data"][0][0] == books["outstanding"]["total"]
        tiers = await drawn(page, "tiers")
        # In the policy's order, lowest tier first; a member never placed holds the base.
        assert tiers["labels"] == ["member", "silver", "gold"]
        assert tiers["data"][0] == [2, 1, 1]
        stock = await drawn(page, "stock")
        assert stock["labels"] == [r["reward_id"] for r in rewards]
        assert stock["data"][2] == [r["redeemed"] for r in rewards]  # redeemed, stacked last
        for chart in (flows, split, tiers, stock):
            assert chart["painted"] > chart["area"] // 50, "a chart left (nearly) blank"
        await expect(page.locator("#books")).to_contain_text("balanced")
        await shoot(page, f"overview-{viewport}")
        assert not page.errors  # type: ignore[attr-defined]


async def test_find_a_member_and_cancel_a_redemption(
    open_console: Open, shop: Shop, admin_http: httpx.AsyncClient
) -> None:
    page = await open_console()
    await go(page, f"#/programs/{shop.program}/members")
    # A member that does not exist: the API's problem, shown.
    await page.fill("#member-id", "nobody")
    await page.click("#find-member button")
    await expect(page.locator("#flash .problem")).to_have_attribute("data-code", "not_found")
    await page.go_back()
    await page.fill("#member-id", "alice")
    await page.click("#find-member button")
    member = (await admin_http.get(f"/v1/programs/{shop.program}/members/alice")).json()
    available = page.locator('[data-field="available"] .value')
    await expect(available).to_have_text(f"{member['balance']['available']:,}")
    await expect(page.locator('[data-field="tier"] .value')).to_have_text(TIER_OF["alice"])
    await expect(page.locator("#lots tbody tr")).to_have_count(len(member["lots"]))
    await expect(page.locator("#history tbody tr").first).to_be_visible()
    await shoot(page, "member-laptop")
    tv = shop.redemptions["alice/tv"]
    await page.click(f'button[data-cancel="{tv}"]')
    await expect(page.locator("#flash .notice")).to_contain_text("cancelled")
    await expect(page.locator(f'button[data-cancel="{tv}"]')).to_have_count(0)
    after = (await admin_http.get(f"/v1/programs/{shop.program}/redemptions/{tv}")).json()
    assert after["status"] == "cancelled"
    refunded = member["balance"]["available"] + TV_COST_POINTS  # back into her lots
    await expect(available).to_have_text(f"{refunded:,}")
    await shoot(page, "member-cancelled-laptop")


async def test_a_pending_review_is_shown_and_approved(
    open_console: Open, shop: Shop, admin_http: httpx.AsyncClient
) -> None:
    page = await open_console()
    await go(page, f"#/programs/{shop.program}/reviews")
    row = page.locator("#reviews tbody tr", has_text="dave")
    await expect(row).to_contain_text("gift card")
    await expect(row).to_contain_text("3,500")
    await shoot(page, "reviews-laptop")
    await page.click(f'button[data-approve="{shop.review_id}"]')
    await expect(page.locator("#flash .notice")).to_contain_text("approved")
    await expect(page.locator("#reviews")).to_have_text("Nothing waits for a review.")
    review = (await admin_http.get(f"/v1/programs/{shop.program}/reviews/{shop.review_id}")).json()
    assert review["status"] == "approved"
    assert review["decision_reason"] == "checked with the member"
    await page.select_option("#review-status", "approved")
    await expect(page.locator("#reviews tbody tr", has_text="dave")).to_contain_text("approved")


async def test_the_rule_diff_shows_what_changed_between_versions(
    open_console: Open, shop: Shop
) -> None:
    page = await open_console()
    await go(page, f"#/programs/{shop.program}/rules")
    await expect(page.locator("#rule-versions tbody tr")).to_have_count(2)
    changes = page.locator("#rule-changes")
    await expect(changes).to_contain_text("v1 → v2")
    await expect(changes).to_contain_text("added check_in")
    await expect(changes).to_contain_text("changed order_points")
    diff = page.locator("#rule-diff pre.diff")
    await expect(diff.locator(".del", has_text='"rate": "0.01"')).to_have_count(1)
    await expect(diff.locator(".add", has_text='"rate": "0.02"')).to_have_count(1)
    await shoot(page, "rules-laptop")
    # The other way round: v2 → v1 removes check_in.
    await page.select_option("#diff-from", "2")
    await page.select_option("#diff-to", "1")
    await expect(changes).to_contain_text("removed check_in")


async def test_the_audit_log_and_the_keys(open_console: Open, shop: Shop) -> None:
    page = await open_console()
    await go(page, f"#/audit?program_id={shop.program}")
    await expect(page.locator("#audit tbody tr", has_text="reward.put").first).to_be_visible()
    await expect(page.locator("#audit tbody tr", has_text="rules.put")).to_have_count(2)
    await shoot(page, "audit-laptop")
    await page.click('#nav a[data-page="keys"]')
    await expect(page.locator("#keys tbody tr", has_text="admin").first).to_be_visible()
    await shoot(page, "keys-laptop")


async def test_a_viewer_is_not_offered_what_it_may_not_do(
    open_console: Open, shop: Shop, admin_http: httpx.AsyncClient
) -> None:
    made = await admin_http.post(
        "/v1/keys", json={"name": "console viewer", "role": "viewer", "programs": [shop.program]}
    )
    assert made.status_code == 201, made.text
    page = await open_console(key=made.json()["key"])
    await expect(page.locator("#whoami")).to_contain_text("viewer")
    await expect(page.locator(f'a[data-program="{shop.program}"]')).to_be_visible()
    for hidden in ("keys", "audit"):
        await expect(page.locator(f'#nav a[data-page="{hidden}"]')).to_have_count(0)
    await go(page, f"#/programs/{shop.program}/members/bob")
    await expect(page.locator("#redemptions tbody tr")).to_have_count(1)
    await expect(page.locator("button[data-cancel]")).to_have_count(0)
    await go(page, f"#/programs/{shop.program}/rewards")
    await expect(page.locator("#rewards tbody tr")).to_have_count(3)
    await expect(page.locator("button[data-restock]")).to_have_count(0)
    await go(page, f"#/programs/{shop.program}/reviews?status=any")
    await expect(page.locator("#reviews tbody tr")).to_have_count(1)
    await expect(page.locator("button[data-approve], button[data-reject]")).to_have_count(0)
    # Reports, experiments and simulations are read, never started or ended.
    await go(page, f"#/programs/{shop.program}/reports")
    await expect(page.locator("#report-liability")).to_be_visible()
    await go(page, f"#/programs/{shop.program}/experiments")
    await expect(page.locator("#experiments")).to_be_visible()
    await expect(page.locator("#new-experiment")).to_have_count(0)
    await go(page, f"#/programs/{shop.program}/simulations")
    await expect(page.locator("h1")).to_have_text("Simulations")
    await expect(page.locator("#new-simulation")).to_have_count(0)
    # A page the role may not open says so rather than failing.
    await go(page, "#/keys")
    await expect(page.locator("#view")).to_contain_text("may not open this page")


async def test_on_a_phone_the_nav_folds_behind_the_menu(open_console: Open, shop: Shop) -> None:
    page = await open_console(viewport=PHONE)
    await go(page, f"#/programs/{shop.program}/rewards")
    await drawn(page, "stock")
    nav_link = page.locator('#nav a[data-page="rules"]')
    await expect(nav_link).not_to_be_in_viewport()
    await shoot(page, "rewards-phone")
    await page.click("#menu-toggle")
    await expect(nav_link).to_be_in_viewport()
    await shoot(page, "menu-open-phone")
    await nav_link.click()
    await expect(page.locator("#rule-versions")).to_be_visible()
    await expect(nav_link).not_to_be_in_viewport()
    # Nothing wider than the screen but what scrolls inside its own box (tables, diffs).
    overflow = await page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= PHONE["width"], overflow
    await shoot(page, "rules-phone")


async def test_a_service_key_sees_its_programs_members_and_nothing_to_change(
    open_console: Open, shop: Shop, admin_http: httpx.AsyncClient
) -> None:
    made = await admin_http.post(
        "/v1/keys",
        json={"name": "console shop backend", "role": "service", "programs": [shop.program]},
    )
    assert made.status_code == 201, made.text
    page = await open_console(key=made.json()["key"])
    await expect(page.locator("#whoami")).to_contain_text("service")
    # It may not list programs: those it is limited to, opening on their members.
    await page.click(f'a[data-program="{shop.program}"]')
    await expect(page.locator("#find-member")).to_be_visible()
    for hidden in ("overview", "reviews", "rules", "audit", "keys"):
        await expect(page.locator(f'#nav a[data-page="{hidden}"]')).to_have_count(0)
    await expect(page.locator('#nav a[data-page="rewards"]')).to_be_visible()
    await page.fill("#member-id", "bob")
    await page.click("#find-member button")
    await expect(page.locator("#redemptions tbody tr")).to_have_count(1)
    await expect(page.locator("button[data-cancel]")).to_have_count(0)


async def report(http: httpx.AsyncClient, program: str, name: str, **query: str) -> Any:
    answer = await http.get(f"/v1/programs/{program}/reports/{name}", params=query)
    assert answer.status_code == 200, answer.text
    return answer.json()


def this_year() -> dict[str, str]:
    """The overview's window: this month and the 11 before it, by month (UTC)."""
    today = datetime.now(UTC).date()
    month = today.year * 12 + today.month - 1 - 11
    return {"from": f"{month // 12:04d}-{month % 12 + 1:02d}-01", "to": today.isoformat()}


async def test_the_overview_charts_the_reports(
    open_console: Open, shop: Shop, admin_http: httpx.AsyncClient
) -> None:
    window = {**this_year(), "granularity": "month"}
    liability = await report(admin_http, shop.program, "liability", **window)
    funnel = await report(admin_http, shop.program, "funnel", **window)
    rewards = await report(admin_http, shop.program, "rewards", **window)
    books = (await admin_http.get(f"/v1/programs/{shop.program}/ledger/summary")).json()
    for viewport, size in (("laptop", LAPTOP), ("phone", PHONE)):
        page = await open_console(viewport=size)
        await go(page, f"#/programs/{shop.program}")
        chart = await drawn(page, "liability")
        assert chart["labels"] == [row["period"][:7] for row in liability["rows"]]
        closing = [row["closing"] for row in liability["rows"]]
        assert chart["data"][0] == closing and closing[-1] == books["outstanding"]["total"]
        # Deferred revenue in euros: minor units (cents) / 100, at half a cent a point.
        deferred = [float(row["deferred_revenue_money"]) / 100 for row in liability["rows"]]
        assert chart["data"][1] == pytest.approx(deferred) and deferred[-1] > 0
        flows = await drawn(page, "issued-redeemed")
        assert flows["data"] == [
            [row["issued"] for row in liability["rows"]],
            [row["redeemed"] for row in liability["rows"]],
        ]
        stages = await drawn(page, "funnel")
        keys = ("earned", "reached_reward", "redeemed_once", "redeemed_twice")
        totals = [sum(row[key] for row in funnel["rows"]) for key in keys]
        assert stages["data"] == [totals] and totals[0] == len(EARNED)
        rates = page.locator("#funnel-rates tbody tr")
        await expect(rates).to_have_count(4)
        await expect(rates.nth(2)).to_contain_text(f"{100 * totals[2] / totals[0]:.1f}%")
        for drawn_chart in (chart, flows, stages):
            assert drawn_chart["painted"] > drawn_chart["area"] // 50, "a chart left blank"
        cells = page.locator("[data-heatmap] td[data-count]")
        await expect(cells).to_have_count(7 * 24)
        counted = await cells.evaluate_all(
            "(tds) => tds.reduce((sum, td) => sum + Number(td.dataset.count), 0)"
        )
        assert counted == sum(map(sum, rewards["heatmap"]["counts"])) > 0
        await shoot(page, f"overview-reports-{viewport}")
        assert not page.errors  # type: ignore[attr-defined]


async def test_the_reports_page_shows_each_report_and_downloads_csv(
    open_console: Open, shop: Shop, admin_http: httpx.AsyncClient
) -> None:
    liability = await report(admin_http, shop.program, "liability", granularity="month")
    members = await report(admin_http, shop.program, "members")
    for viewport, size in (("laptop", LAPTOP), ("phone", PHONE)):
        page = await open_console(viewport=size)
        await go(page, f"#/programs/{shop.program}/reports")
        for name in ("liability", "breakage", "expiring", "funnel", "rewards", "members"):
            await expect(page.locator(f"#report-{name} [data-window]")).to_be_visible()
        rows = page.locator("#report-liability-table tbody tr")
        await expect(rows).to_have_count(len(liability["rows"]))
        last = liability["rows"][-1]
        await expect(rows.last).to_contain_text(f"{last['closing']:,}")
        await expect(rows.last).to_contain_text(last["deferred_revenue_money"])
        tiers = page.locator("#report-members-table-tiers tbody tr")
        await expect(tiers).to_have_count(len(members["tiers"]))
        await expect(page.locator("#report-rewards-table")).to_contain_text("mug")
        await shoot(page, f"reports-{viewport}")
    async with page.expect_download() as started:
        await page.click('button[data-csv="liability"]')
    download = await started.value
    assert download.suggested_filename.endswith(".csv")
    saved = await download.path()
    lines = Path(saved).read_text().splitlines()
    assert lines[0].split(",")[:2] == ["period", "opening"], lines[0]
    assert len(lines) == 1 + len(liability["rows"])
    await expect(page.locator("#flash .notice")).to_contain_text("saved")
    # Another window, by day: the table follows the picker.
    today = datetime.now(UTC).date()
    await page.fill("#report-from", (today - timedelta(days=2)).isoformat())
    await page.fill("#report-to", today.isoformat())
    await page.select_option("#report-granularity", "day")
    await page.click("#report-window button[type=submit]")
    await expect(page.locator("#report-liability-table tbody tr")).to_have_count(3)
    assert not page.errors  # type: ignore[attr-defined]


async def test_an_experiment_is_started_measured_and_ended(
    open_console: Open, lab: Lab, admin_http: httpx.AsyncClient
) -> None:
    page = await open_console()
    await go(page, f"#/programs/{lab.program}/experiments")
    await expect(page.locator("#experiments")).to_have_text("No experiment yet.")
    now = datetime.now(UTC).replace(microsecond=0)
    await page.fill("#experiment-id", "double-orders")
    await page.fill("#experiment-starts", (now - timedelta(hours=1)).isoformat())
    await page.fill("#experiment-ends", (now + timedelta(days=7)).isoformat())
    arms = page.locator("#arm-rows tr")
    await expect(arms).to_have_count(2)
    await arms.nth(0).locator("[name=arm-version]").select_option("1")
    await arms.nth(1).locator("[name=arm-name]").fill("double")
    await arms.nth(1).locator("[name=arm-version]").select_option("2")
    await shoot(page, "experiment-new-laptop")
    await page.click("#new-experiment button[type=submit]")
    await expect(page.locator("#experiment-summary")).to_contain_text("running")
    await expect(page.locator("#experiments tbody tr", has_text="double-orders")).to_have_count(1)
    # Members earn inside the window; each is scored by their arm's rules.
    await lab.orders(admin_http, LAB_IN_EXPERIMENT, "trial")
    expected = (
        await admin_http.get(f"/v1/programs/{lab.program}/experiments/double-orders/results")
    ).json()
    assert sum(arm["members"] for arm in expected["arms"]) == len(LAB_IN_EXPERIMENT)
    await page.reload()
    results = page.locator("#experiment-results tbody tr")
    await expect(results).to_have_count(2)
    for row, arm in zip(("control", "double"), expected["arms"], strict=True):
        line = page.locator("#experiment-results tbody tr", has_text=row)
        await expect(line).to_contain_text(f"{arm['points_per_member']:.2f}")
        await expect(line.locator("td").nth(1)).to_have_text(str(arm["members"]))
    await expect(results.nth(0)).to_contain_text("control")
    await shoot(page, "experiment-results-laptop")
    phone = await open_console(viewport=PHONE)
    await go(phone, f"#/programs/{lab.program}/experiments?id=double-orders")
    await expect(phone.locator("#experiment-results tbody tr")).to_have_count(2)
    await shoot(phone, "experiment-results-phone")
    overflow = await phone.evaluate("document.documentElement.scrollWidth")
    assert overflow <= PHONE["width"], overflow
    # End it, promoting the double arm: its rules become a new version (every dialog is
    # accepted).
    await page.select_option("#promote", "double")
    await page.click("#end-experiment")
    await expect(page.locator("#flash .notice")).to_contain_text("ended")
    await expect(page.locator("#experiment-summary")).to_contain_text("promoted double")
    await expect(page.locator("#end-experiment")).to_have_count(0)
    ended = (await admin_http.get(f"/v1/programs/{lab.program}/experiments/double-orders")).json()
    assert ended["status"] == "ended" and ended["promoted_arm"] == "double"
    await shoot(page, "experiment-ended-laptop")
    assert not page.errors  # type: ignore[attr-defined]


async def test_a_simulation_is_started_polled_and_shown(
    open_console: Open, lab: Lab, admin_http: httpx.AsyncClient
) -> None:
    page = await open_console()
    await go(page, f"#/programs/{lab.program}/simulations")
    rules = page.locator("#simulation-rules")
    await expect(rules).to_have_value(re.compile("order_points"))
    candidate = [
        {**rule, "award": {**rule["award"], "rate": "0.05"}}
        if rule["id"] == "order_points"
        else rule
        for rule in json.loads(await rules.input_value())
    ]
    await rules.fill(json.dumps(candidate, indent=2))
    await page.fill(
        "#simulation-from", (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    await page.click("#new-simulation button[type=submit]")
    status = page.locator("#simulation-status")
    await expect(status).to_have_attribute("data-status", "done", timeout=SIMULATION_TIMEOUT_MS)
    simulation_id = page.url.rsplit("id=", 1)[1]
    job = (await admin_http.get(f"/v1/programs/{lab.program}/simulations/{simulation_id}")).json()
    result = job["result"]
    assert result["events"] >= len(LAB_BEFORE) and result["difference"] > 0
    await expect(page.locator("#simulation-difference .value")).to_have_text(
        f"+{result['difference']:,}"
    )
    by_rule = page.locator("#sim-by-rule tbody tr", has_text="order_points")
    order_points = next(r for r in result["by_rule"] if r["rule_id"] == "order_points")
    await expect(by_rule).to_contain_text(f"{order_points['candidate_points']:,}")
    await expect(page.locator("#sim-by-type tbody tr", has_text="order")).to_have_count(1)
    await expect(page.locator("#sim-by-tier tbody tr")).to_have_count(len(result["by_tier"]))
    await expect(page.locator("#sim-top-members tbody tr")).to_have_count(
        len(result["top_members"])
    )
    await shoot(page, "simulation-laptop")
    phone = await open_console(viewport=PHONE)
    await go(phone, f"#/programs/{lab.program}/simulations?id={simulation_id}")
    await expect(phone.locator("#simulation-status")).to_have_attribute("data-status", "done")
    await shoot(phone, "simulation-phone")
    overflow = await phone.evaluate("document.documentElement.scrollWidth")
    assert overflow <= PHONE["width"], overflow
    assert not page.errors  # type: ignore[attr-defined]
