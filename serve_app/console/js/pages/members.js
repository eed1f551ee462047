// Find a member by id, or browse the program's members (by id, a page at a time).
import { PAGE_SIZE_MAX } from "../api.js";
import { h, number, panel, table, when } from "../ui.js";

const P = "/v1/programs/{program_id}";

export default {
  id: "members",
  title: "Members",
  route: "/programs/:program/members",
  scope: "program",
  nav: true,
  needs: `GET ${P}/members/{member_id}`,
  async render(target, { api, can, href, navigate, params, query }) {
    const input = h("input", { name: "member", placeholder: "member id", required: true, id: "member-id" });
    const tierInput = h("input", { name: "tier", placeholder: "any tier", value: query.tier || "" });
    target.append(
      h("h1", {}, "Members"),
      h(
        "form",
        { class: "inline", id: "find-member", onsubmit: (event) => {
          event.preventDefault();
          navigate("/programs/:program/members/:member", { program: params.program, member: input.value.trim() });
        } },
        h("label", {}, "Find a member", input),
        h("button", { type: "submit" }, "Open"),
      ),
    );
    if (!can(`GET ${P}/members`)) return;
    const base = `/v1/programs/${encodeURIComponent(params.program)}`;
    const page = await api.get(`${base}/members`, { limit: PAGE_SIZE_MAX, tier: query.tier, cursor: query.cursor });
    target.append(
      panel(
        "All members",
        h("form", { class: "inline", onsubmit: (event) => {
          event.preventDefault();
          navigate("/programs/:program/members", { program: params.program }, { tier: tierInput.value.trim() });
        } }, h("label", {}, "Tier", tierInput), h("button", { type: "submit", class: "secondary" }, "Filter")),
        table(
          [
            { label: "Member", value: (m) => h("a", { href: href("/programs/:program/members/:member", { program: params.program, member: m.member_id }) }, m.member_id) },
            { label: "Balance", value: (m) => number(m.balance), num: true },
            { label: "Tier", value: (m) => m.tier || "—" },
            { label: "Earned", value: (m) => number(m.lifetime_earned), num: true },
            { label: "Spent", value: (m) => number(m.lifetime_spent), num: true },
            { label: "Since", value: (m) => when(m.created_at) },
          ],
          page.items,
          { id: "members", empty: "No member." },
        ),
        page.next_cursor
          ? h("p", {}, h("a", { href: href("/programs/:program/members", { program: params.program }, { tier: query.tier, cursor: page.next_cursor }) }, "Next page →"))
          : null,
      ),
    );
  },
};
