// A redemption by id (they are listed per member on the member's page), with Cancel for
// keys that may cancel.
import { action, badge, h, json, number, panel, showNotice, table, when } from "../ui.js";

const P = "/v1/programs/{program_id}";

export default {
  id: "redemptions",
  title: "Redemptions",
  route: "/programs/:program/redemptions",
  scope: "program",
  nav: true,
  needs: `GET ${P}/redemptions/{redemption_id}`,
  async render(target, { api, can, href, navigate, params, query, refresh }) {
    const input = h("input", { name: "redemption", placeholder: "redemption id", required: true, value: query.id || "", size: 38 });
    target.append(
      h("h1", {}, "Redemptions"),
      h("p", { class: "muted" }, "A member's redemptions are listed on their page (",
        h("a", { href: href("/programs/:program/members", { program: params.program }) }, "Members"), "). Open one by id:"),
      h("form", { class: "inline", id: "find-redemption", onsubmit: (event) => {
        event.preventDefault();
        navigate("/programs/:program/redemptions", { program: params.program }, { id: input.value.trim() });
      } }, h("label", {}, "Redemption id", input), h("button", { type: "submit" }, "Open")),
    );
    if (!query.id) return;
    const base = `/v1/programs/${encodeURIComponent(params.program)}/redemptions/${encodeURIComponent(query.id)}`;
    const r = await api.get(base);
    const mayCancel = can(`POST ${P}/redemptions/{redemption_id}/cancel`) && !["failed", "cancelled", "compensating"].includes(r.status);
    target.append(
      panel(
        `Redemption ${r.id}`,
        table(
          [
            { label: "Member", value: (x) => h("a", { href: href("/programs/:program/members/:member", { program: params.program, member: x.member_id }) }, x.member_id) },
            { label: "Reward", value: (x) => x.reward_id },
            { label: "Units", value: (x) => x.quantity, num: true },
            { label: "Points", value: (x) => number(x.points_spent), num: true },
            { label: "Status", value: (x) => badge(x.status) },
            { label: "When", value: (x) => when(x.created_at) },
          ],
          [r],
          { id: "redemption" },
        ),
        r.failure ? json(r.failure) : null,
        mayCancel
          ? h("div", { class: "actions" }, action("Cancel redemption", async () => {
              if (!confirm(`Cancel redemption ${r.id}? The points go back to the member, the units to stock.`)) return;
              const done = await api.post(`${base}/cancel`);
              await refresh();
              showNotice(`Redemption ${done.id}: ${done.status}.`);
            }, { class: "danger", "data-cancel": r.id }))
          : null,
      ),
    );
  },
};
