// One member: balance, tier, lots with their expiry, history, tier changes, redemptions
// (with a Cancel button for keys that may cancel).
import { h, action, badge, card, clear, number, panel, showNotice, table, when } from "../ui.js";

const P = "/v1/programs/{program_id}";
const M = `${P}/members/{member_id}`;
// Redemptions that can no longer be cancelled (domain/rewards.py: terminal, or already undone).
const NOT_CANCELLABLE = new Set(["failed", "cancelled", "compensating"]);

export default {
  id: "member",
  title: "Member",
  route: "/programs/:program/members/:member",
  scope: "program",
  nav: false,
  needs: `GET ${M}`,
  async render(target, context) {
    const { api, params } = context;
    const base = `/v1/programs/${encodeURIComponent(params.program)}/members/${encodeURIComponent(params.member)}`;
    const member = await api.get(base);
    const tier = member.tier;
    target.append(
      h("h1", {}, `Member ${member.member_id}`),
      h(
        "div",
        { class: "cards", id: "member-cards" },
        card("Available", number(member.balance.available), { "data-field": "available" }),
        card("Pending", number(member.balance.pending ?? 0)),
        card("Held for review", number(member.balance.held ?? 0)),
        card("Total", number(member.balance.total)),
        card("Tier", tier ? tier.name : "—", { "data-field": "tier" }),
        card("Earned / spent", `${number(member.lifetime_earned)} / ${number(member.lifetime_spent)}`),
      ),
      tier && tier.next ? h("p", { class: "muted" }, `${number(tier.points_to_next)} points to ${tier.next}.`) : "",
    );
    const grid = h("div", { class: "grid" });
    grid.append(
      panel(
        `Lots (${member.lots_total})`,
        table(
          [
            { label: "Remaining", value: (l) => number(l.remaining), num: true },
            { label: "Of", value: (l) => number(l.original), num: true },
            { label: "Expires", value: (l) => when(l.expires_at) },
            { label: "Earned", value: (l) => when(l.created_at) },
          ],
          member.lots,
          { id: "lots", empty: "No lot with points left." },
        ),
        member.expiring_soon.length
          ? h("p", { class: "muted" }, `Expiring soon: ${member.expiring_soon.map((e) => `${number(e.points)} on ${e.date}`).join(", ")}`)
          : null,
      ),
    );
    const tierChanges = await api.get(`${base}/tier-changes`);
    grid.append(
      panel(
        "Tier changes",
        table(
          [
            { label: "When", value: (c) => when(c.changed_at) },
            { label: "From", value: (c) => c.from_tier || "—" },
            { label: "To", value: (c) => c.to_tier },
            { label: "Why", value: (c) => c.reason },
          ],
          tierChanges.items,
          { empty: "No tier change." },
        ),
      ),
    );
    target.append(grid);
    const history = h("div");
    const redemptions = h("div");
    target.append(panel("History", history), panel("Redemptions", redemptions));
    await Promise.all([showHistory(history, base, api), showRedemptions(redemptions, base, context)]);
  },
};

async function showHistory(box, base, api, cursor = null, rows = []) {
  const page = await api.get(`${base}/transactions`, { limit: 50, cursor });
  rows.push(...page.items);
  clear(
    box,
    table(
      [
        { label: "When", value: (t) => when(t.created_at) },
        { label: "Type", value: (t) => badge(t.type) },
        { label: "Points", value: (t) => number(t.points), num: true },
        { label: "Balance after", value: (t) => number(t.balance_after), num: true },
        { label: "Reason", value: (t) => t.reason },
        { label: "Expires", value: (t) => when(t.expires_at) },
      ],
      rows,
      { id: "history", empty: "No transaction." },
    ),
    page.next_cursor ? action("Load more", () => showHistory(box, base, api, page.next_cursor, rows), { class: "secondary" }) : null,
  );
}

async function showRedemptions(box, base, context) {
  const { api, can, params } = context;
  const mayCancel = can(`POST ${P}/redemptions/{redemption_id}/cancel`);
  const page = await api.get(`${base}/redemptions`, { limit: 100 });
  const program = `/v1/programs/${encodeURIComponent(params.program)}`;
  clear(
    box,
    table(
      [
        { label: "When", value: (r) => when(r.created_at) },
        { label: "Reward", value: (r) => r.reward_id },
        { label: "Units", value: (r) => r.quantity, num: true },
        { label: "Points", value: (r) => number(r.points_spent), num: true },
        { label: "Status", value: (r) => badge(r.status) },
        { label: "Id", value: (r) => h("code", {}, r.id) },
        {
          label: "",
          value: (r) =>
            mayCancel && !NOT_CANCELLABLE.has(r.status)
              ? action("Cancel", async () => {
                  if (!confirm(`Cancel redemption ${r.id}? The points go back to the member, the units to stock.`)) return;
                  const done = await api.post(`${program}/redemptions/${encodeURIComponent(r.id)}/cancel`);
                  showNotice(`Redemption ${done.id}: ${done.status}.`);
                  await context.refresh();
                  showNotice(`Redemption ${done.id}: ${done.status}.`);
                }, { class: "danger", "data-cancel": r.id })
              : null,
        },
      ],
      page.items,
      { id: "redemptions", empty: "No redemption." },
    ),
  );
}
