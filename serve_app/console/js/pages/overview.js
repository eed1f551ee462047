// A program at a glance: its books (GET …/ledger/summary) as cards and charts, members by
// tier (from the members list) and the rewards' stock.
import { bar, doughnut } from "../charts.js";
import { badge, card, h, number, panel } from "../ui.js";

// Members counted for the tier chart: past this the chart says it shows the first ones.
const TIER_MEMBERS_MAX = 2000;
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
    if (can(`GET ${P}/members`)) {
      const { items, truncated } = await api.all(`${base}/members`, {}, TIER_MEMBERS_MAX);
      const counts = new Map();
      // A member never yet placed (no earning event since tiers were set) holds the base
      // tier, as the member's own view says (domain/earning.py tier_view).
      const baseTier = program.policy.tiers ? program.policy.tiers.tiers[0].name : "no tier";
      for (const member of items) {
        const tier = member.tier || baseTier;
        counts.set(tier, (counts.get(tier) || 0) + 1);
      }
      const order = tierOrder(program.policy, [...counts.keys()]);
      charts.append(
        panel(
          "Members by tier",
          truncated ? h("p", { class: "muted" }, `The first ${number(items.length)} members.`) : null,
          items.length
            ? bar("tiers", order, [{ label: "members", data: order.map((t) => counts.get(t) || 0) }], { label: "Members by tier" })
            : h("p", { class: "muted" }, "No member yet."),
        ),
      );
    }
    if (can(`GET ${P}/rewards`)) {
      const { items } = await api.all(`${base}/rewards`, {}, REWARDS_MAX);
      charts.append(panel("Reward stock", stockChart(items)));
    }
    target.append(charts);
  },
};

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
