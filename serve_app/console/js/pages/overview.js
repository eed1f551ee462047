// A program at a glance: its books (GET …/ledger/summary) as cards and charts; from the
// reports (docs/reports.md), over the last 12 months: the liability in points and money,
// issued against redeemed, the funnel, members by tier and when rewards are redeemed; the
// rewards' stock.
import { bar, doughnut, line } from "../charts.js";
import { badge, card, h, number, panel, table } from "../ui.js";
import { REPORTS, heatmap, major } from "./reports.js";

// The charts' window: this month and the 11 before it (UTC), by month.
const MONTHS = 12;
function lastYear() {
  const now = new Date();
  const from = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - (MONTHS - 1), 1));
  return { from: from.toISOString().slice(0, 10), to: now.toISOString().slice(0, 10) };
}
const REWARDS_MAX = 50;
const P = "/v1/programs/{program_id}";

export default {
  id: "overview",
  title: "Overview",
  route: "/programs/:program",
  scope: "program",
  nav: true,
  needs: `GET ${P}`,
  async render(target, { api, can, params }) {
    const base = `/v1/programs/${encodeURIComponent(params.program)}`;
    const program = await api.get(base);
    target.append(h("h1", {}, `${program.name} `, h("span", { class: "muted" }, `(${program.program_id})`)));
    const charts = h("div", { class: "grid" });
    if (can(`GET ${P}/ledger/summary`)) {
      const books = await api.get(`${base}/ledger/summary`);
      const flows = books.flows;
      target.append(
        h(
          "div",
          { class: "cards", id: "books" },
          card("Members", number(books.accounts ? books.accounts.members : null)),
          card("Points held by members", number(books.outstanding.total)),
          card("Issued", number(flows.issued)),
          card("Redeemed", number(flows.redeemed)),
          card("Expired", number(flows.expired)),
          card("Books", books.balanced ? badge("balanced", "good") : badge("unbalanced", "bad")),
        ),
      );
      charts.append(
        panel(
          "Points flow",
          bar("flows", ["Issued", "Redeemed", "Expired", "Reversed", "Refunded"], [
            { label: "points", data: [flows.issued, flows.redeemed, flows.expired, flows.reversed, flows.refunded] },
          ], { label: "Issued, redeemed, expired, reversed and refunded points" }),
        ),
        panel(
          "Where the issued points are",
          doughnut(
            "issued-split",
            ["Held by members", "Redeemed", "Expired", "Reversed"],
            [books.outstanding.total, flows.redeemed, flows.expired, flows.reversed].map((v) => Math.max(0, v)),
            { label: "Points held, redeemed, expired and reversed" },
          ),
        ),
      );
    }
    // The reports of the last 12 months, read together (each one database snapshot).
    // (REPORTS names each report's route with `needs:`, which the unit test checks.)
    const report = (name) =>
      can(REPORTS.find((r) => r.name === name).needs)
        ? api.get(`${base}/reports/${name}`, { ...lastYear(), granularity: "month" })
        : null;
    const [liability, funnel, members, redemptions] = await Promise.all(
      ["liability", "funnel", "members", "rewards"].map(report));
    if (liability) charts.append(...liabilityCharts(liability));
    if (funnel) charts.append(funnelChart(funnel));
    if (members) {
      // A member never yet placed (no earning event since tiers were set) holds the base
      // tier, as the member's own view says (domain/earning.py tier_view).
      const baseTier = program.policy.tiers ? program.policy.tiers.tiers[0].name : "no tier";
      const counts = new Map();
      for (const { tier, members: count } of members.tiers) {
        const name = tier ?? baseTier;
        counts.set(name, (counts.get(name) || 0) + count);
      }
      const order = tierOrder(program.policy, [...counts.keys()]);
      charts.append(
        panel(
          "Members by tier",
          members.members
            ? bar("tiers", order, [{ label: "members", data: order.map((t) => counts.get(t) || 0) }], { label: "Members by tier" })
            : h("p", { class: "muted" }, "No member yet."),
        ),
      );
    }
    if (redemptions) {
      const box = panel(`Redemptions by weekday and hour (${redemptions.time_zone})`, heatmap(redemptions.heatmap));
      box.classList.add("wide");
      charts.append(box);
    }
    if (can(`GET ${P}/rewards`)) {
      const { items } = await api.all(`${base}/rewards`, {}, REWARDS_MAX);
      charts.append(panel("Reward stock", stockChart(items)));
    }
    target.append(charts);
  },
};

// The liability per month: closing points and, with a point value, the deferred revenue in
// money (a line on two axes); and issued against redeemed points (bars).
function liabilityCharts(report) {
  const labels = report.rows.map((row) => row.period.slice(0, 7));
  const money = report.currency && report.rows.some((row) => row.deferred_revenue_money !== null);
  const sets = [{ label: "closing points", data: report.rows.map((row) => row.closing), yAxisID: "y" }];
  if (money) {
    sets.push({ label: `deferred revenue (${report.currency})`, yAxisID: "y1",
      data: report.rows.map((row) => major(row.deferred_revenue_money, report.currency)) });
  }
  return [
    panel(
      "Liability",
      money ? null : h("p", { class: "muted" }, "No point value in the policy: points only."),
      line("liability", labels, sets, { label: "Closing points and deferred revenue per month",
        y: "points", y1: money ? report.currency : undefined }),
    ),
    panel(
      "Issued and redeemed",
      bar("issued-redeemed", labels, [
        { label: "issued", data: report.rows.map((row) => row.issued) },
        { label: "redeemed", data: report.rows.map((row) => row.redeemed) },
      ], { label: "Points issued and redeemed per month" }),
    ),
  ];
}

// The funnel over every cohort of the window: members at each stage, with the share of the
// stage before (redeemed twice: of those who redeemed once, as the report's rates).
function funnelChart(report) {
  const total = (key) => report.rows.reduce((sum, row) => sum + row[key], 0);
  const stages = [
    { name: "Earned", members: total("earned"), of: null },
    { name: "Reached a reward", members: total("reached_reward"), of: 0 },
    { name: "Redeemed once", members: total("redeemed_once"), of: 0 },
    { name: "Redeemed twice", members: total("redeemed_twice"), of: 2 },
  ];
  const rate = (stage) => {
    if (stage.of === null) return "—";
    const base = stages[stage.of].members;
    return base ? `${((100 * stage.members) / base).toFixed(1)}%` : "—";
  };
  if (!stages[0].members) return panel("Funnel", h("p", { class: "muted" }, "No member earned in the window."));
  return panel(
    "Funnel",
    bar("funnel", stages.map((s) => s.name), [{ label: "members", data: stages.map((s) => s.members) }],
      { label: "Members at each stage of the funnel" }),
    table(
      [
        { label: "Stage", value: (s) => s.name },
        { label: "Members", value: (s) => number(s.members), num: true },
        { label: "Conversion", value: rate, num: true },
      ],
      stages,
      { id: "funnel-rates" },
    ),
  );
}

// Tiers in the policy's order (lowest first), then any other name the members carry.
function tierOrder(policy, seen) {
  const named = ((policy && policy.tiers && policy.tiers.tiers) || []).map((tier) => tier.name);
  const rest = seen.filter((tier) => !named.includes(tier)).sort();
  return [...named.filter((tier) => seen.includes(tier)), ...rest];
}

// Each reward: units left, reserved (redemptions in flight) and redeemed, stacked.
export function stockChart(rewards) {
  if (!rewards.length) return h("p", { class: "muted" }, "No reward yet.");
  const labels = rewards.map((r) => r.reward_id);
  return bar(
    "stock",
    labels,
    [
      { label: "left", data: rewards.map((r) => r.stock ?? 0) },
      { label: "reserved", data: rewards.map((r) => r.reserved) },
      { label: "redeemed", data: rewards.map((r) => r.redeemed) },
    ],
    { stacked: true, horizontal: true, label: "Units left, reserved and redeemed per reward" },
  );
}
