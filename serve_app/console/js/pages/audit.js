// The audit log: who changed what, when, before and after (admins see every entry,
// operators those of their programs).
import { h, json, panel, table, when } from "../ui.js";

export default {
  id: "audit",
  title: "Audit log",
  route: "/audit",
  scope: "global",
  nav: true,
  needs: "GET /v1/audit",
  async render(target, { api, href, navigate, query }) {
    const programInput = h("input", { name: "program_id", placeholder: "every program", value: query.program_id || "" });
    const page = await api.get("/v1/audit", { program_id: query.program_id, limit: 100, cursor: query.cursor });
    const change = (entry) =>
      entry.before === null && entry.after === null
        ? "—"
        : h("details", {}, h("summary", {}, "before / after"), h("div", { class: "grid" }, json(entry.before), json(entry.after)));
    target.append(
      h("h1", {}, "Audit log"),
      h("form", { class: "inline", onsubmit: (event) => {
        event.preventDefault();
        navigate("/audit", {}, { program_id: programInput.value.trim() });
      } }, h("label", {}, "Program", programInput), h("button", { type: "submit", class: "secondary" }, "Filter")),
      panel(
        null,
        table(
          [
            { label: "When", value: (e) => when(e.at) },
            { label: "Action", value: (e) => h("code", {}, e.action) },
            { label: "Program", value: (e) => e.program_id || "—" },
            { label: "Target", value: (e) => e.target || "—" },
            { label: "Key", value: (e) => `${e.key_id} (${e.role})` },
            { label: "Change", value: change },
          ],
          page.items,
          { id: "audit", empty: "No entry." },
        ),
        page.next_cursor
          ? h("p", {}, h("a", { href: href("/audit", {}, { program_id: query.program_id, cursor: page.next_cursor }) }, "Older →"))
          : null,
      ),
    );
  },
};
