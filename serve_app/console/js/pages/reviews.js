// Debits and redemptions held above the program's review threshold: approve or reject
// (with a reason) for keys that may decide.
import { action, badge, h, number, panel, showNotice, table, when } from "../ui.js";

const P = "/v1/programs/{program_id}";
const STATUSES = ["pending", "approved", "rejected", "any"];

export default {
  id: "reviews",
  title: "Reviews",
  route: "/programs/:program/reviews",
  scope: "program",
  nav: true,
  needs: `GET ${P}/reviews`,
  async render(target, { api, can, href, navigate, params, query, refresh }) {
    const status = query.status ?? "pending";
    const base = `/v1/programs/${encodeURIComponent(params.program)}/reviews`;
    const page = await api.get(base, { status: status === "any" ? null : status, limit: 100, cursor: query.cursor });
    const mayApprove = can(`POST ${P}/reviews/{review_id}/approve`);
    const mayReject = can(`POST ${P}/reviews/{review_id}/reject`);
    const decide = (review, decision) =>
      action(decision === "approve" ? "Approve" : "Reject", async () => {
        const reason = prompt(`Why ${decision} ${number(review.points)} points for ${review.member_id}?`);
        if (!reason) return;
        const done = await api.post(`${base}/${encodeURIComponent(review.review_id)}/${decision}`, { reason });
        await refresh();
        showNotice(`Review of ${done.member_id}'s ${done.kind}: ${done.status}.`);
      }, { class: decision === "approve" ? "" : "danger", [`data-${decision}`]: review.review_id });
    target.append(
      h("h1", {}, "Reviews"),
      h("form", { class: "inline" },
        h("label", {}, "Status", h("select", { id: "review-status", onchange: (event) =>
          navigate("/programs/:program/reviews", { program: params.program }, { status: event.target.value }) },
        STATUSES.map((s) => h("option", { value: s, selected: s === status }, s))))),
      panel(
        null,
        table(
          [
            { label: "When", value: (r) => when(r.created_at) },
            { label: "Member", value: (r) => h("a", { href: href("/programs/:program/members/:member", { program: params.program, member: r.member_id }) }, r.member_id) },
            { label: "Kind", value: (r) => r.kind },
            { label: "Points", value: (r) => number(r.points), num: true },
            { label: "Reason", value: (r) => r.reason },
            { label: "Status", value: (r) => badge(r.status) },
            { label: "Decision", value: (r) => r.decision_reason || "" },
            {
              label: "",
              value: (r) =>
                r.status === "pending"
                  ? h("div", { class: "actions" }, mayApprove ? decide(r, "approve") : null, mayReject ? decide(r, "reject") : null)
                  : null,
            },
          ],
          page.items,
          { id: "reviews", empty: status === "pending" ? "Nothing waits for a review." : "No review." },
        ),
        page.next_cursor
          ? h("p", {}, h("a", { href: href("/programs/:program/reviews", { program: params.program }, { status, cursor: page.next_cursor }) }, "Next page →"))
          : null,
      ),
    );
  },
};
