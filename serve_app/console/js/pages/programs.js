// The programs this key sees: each links to its overview.
import { h, panel, table, when } from "../ui.js";

export default {
  id: "programs",
  title: "Programs",
  route: "/programs",
  scope: "global",
  nav: true,
  async render(target, { api, can, href, navigate, me }) {
    const input = h("input", { name: "program", placeholder: "program id", required: true });
    target.append(
      h("h1", {}, "Programs"),
      h("form", { class: "inline", id: "open-program", onsubmit: (event) => {
        event.preventDefault();
        navigate(can("GET /v1/programs/{program_id}") ? "/programs/:program" : "/programs/:program/members", { program: input.value.trim() });
      } }, h("label", {}, "Open a program", input), h("button", { type: "submit" }, "Open")),
    );
    // A program opens on its overview, or on its members for a key that may not read the
    // program itself (a service key).
    const landing = can("GET /v1/programs/{program_id}") ? "/programs/:program" : "/programs/:program/members";
    let items;
    if (can("GET /v1/programs")) {
      items = (await api.all("/v1/programs", {}, 1000)).items;
    } else {
      // A service key may not list programs: those it is limited to, by id.
      items = (me.programs || []).map((program_id) => ({ program_id, name: "", policy_version: null }));
    }
    target.append(
      panel(
        null,
        table(
          [
            { label: "Program", value: (p) => h("a", { href: href(landing, { program: p.program_id }), "data-program": p.program_id }, p.program_id) },
            { label: "Name", value: (p) => p.name },
            { label: "Time zone", value: (p) => (p.policy ? p.policy.time_zone : "—") },
            { label: "Policy version", value: (p) => p.policy_version ?? "—", num: true },
            { label: "Updated", value: (p) => when(p.updated_at) },
          ],
          items,
          { id: "programs", empty: "No program yet: create one with `points programs create`." },
        ),
      ),
    );
  },
};
