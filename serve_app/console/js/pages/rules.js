// Rule set versions, newest first, and the diff between any two.
import { canonicalJson, diffLines, ruleChanges } from "../diff.js";
import { clear, h, panel, table, when } from "../ui.js";

const P = "/v1/programs/{program_id}";
const VERSIONS_MAX = 200;

export default {
  id: "rules",
  title: "Rules",
  route: "/programs/:program/rules",
  scope: "program",
  nav: true,
  needs: `GET ${P}/rules`,
  async render(target, { api, navigate, params, query }) {
    const base = `/v1/programs/${encodeURIComponent(params.program)}`;
    const { items } = await api.get(`${base}/rules`, { limit: VERSIONS_MAX });
    target.append(h("h1", {}, "Rules"));
    if (!items.length) {
      target.append(panel(null, h("p", { class: "muted" }, "No rule set yet.")));
      return;
    }
    const byVersion = new Map(items.map((set) => [String(set.version), set]));
    // Default: the newest version against the one before it.
    const to = byVersion.has(query.to) ? query.to : String(items[0].version);
    const from = byVersion.has(query.from) ? query.from : String(items[Math.min(1, items.length - 1)].version);
    const pick = (name, selected) =>
      h("select", { id: `diff-${name}`, name, onchange: () => navigate("/programs/:program/rules", { program: params.program },
        { from: document.getElementById("diff-from").value, to: document.getElementById("diff-to").value }) },
      items.map((set) => h("option", { value: set.version, selected: String(set.version) === selected }, `v${set.version}`)));
    const result = h("div", { id: "rule-diff" });
    target.append(
      panel(
        "Versions",
        table(
          [
            { label: "Version", value: (s) => `v${s.version}`, num: true },
            { label: "Rules", value: (s) => s.rules.length, num: true },
            { label: "In effect from", value: (s) => when(s.effective_from) },
            { label: "Made", value: (s) => when(s.created_at) },
          ],
          items,
          { id: "rule-versions" },
        ),
      ),
      panel("Compare", h("form", { class: "inline" }, h("label", {}, "From", pick("from", from)), h("label", {}, "To", pick("to", to))), result),
    );
    showDiff(result, byVersion.get(from), byVersion.get(to));
  },
};

function showDiff(box, before, after) {
  const changes = ruleChanges(before.rules, after.rules);
  const summary = [
    changes.added.length ? `added ${changes.added.join(", ")}` : null,
    changes.removed.length ? `removed ${changes.removed.join(", ")}` : null,
    changes.changed.length ? `changed ${changes.changed.join(", ")}` : null,
  ].filter(Boolean);
  const lines = diffLines(canonicalJson(before.rules), canonicalJson(after.rules));
  const sign = { same: "  ", add: "+ ", del: "- " };
  clear(
    box,
    h("p", { id: "rule-changes" }, `v${before.version} → v${after.version}: `, summary.length ? summary.join("; ") : "no change", "."),
    h("pre", { class: "diff" }, lines.map((l) => h("span", { class: l.op }, sign[l.op] + l.line))),
  );
}
