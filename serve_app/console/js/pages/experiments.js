// Experiments of earning rules (docs/experiments.md): the list, a form to start one (arms:
// name, rule set version, weight; a window), and one experiment's results per arm with the
// 95% intervals against the control, and End (optionally promoting an arm's rules).
import { action, badge, h, number, panel, showError, showNotice, table, when } from "../ui.js";

const P = "/v1/programs/{program_id}";
const E = `${P}/experiments/{experiment_id}`;
const VERSIONS_MAX = 200;
const ARMS_MAX = 10;
const DAY_MS = 86_400_000;

export default {
  id: "experiments",
  title: "Experiments",
  route: "/programs/:program/experiments",
  scope: "program",
  nav: true,
  needs: `GET ${P}/experiments`,
  async render(target, context) {
    const { api, can, params, query } = context;
    const base = `/v1/programs/${encodeURIComponent(params.program)}`;
    const { items } = await api.get(`${base}/experiments`);
    target.append(h("h1", {}, "Experiments"));
    if (query.id) target.append(await results(base, query.id, context));
    target.append(
      panel(
        "All experiments",
        table(
          [
            { label: "Experiment", value: (x) => h("a", { href: context.href("/programs/:program/experiments", params, { id: x.experiment_id }) }, x.experiment_id) },
            { label: "Arms", value: (x) => x.arms.map((a) => `${a.name} (v${a.rule_version}, ${a.weight}%)`).join(", ") },
            { label: "From", value: (x) => when(x.starts_at) },
            { label: "To", value: (x) => when(x.ends_at) },
            { label: "Status", value: (x) => badge(x.status, x.status === "running" ? "good" : "") },
            { label: "Promoted", value: (x) => (x.promoted_arm ? `${x.promoted_arm} → v${x.promoted_version}` : "—") },
          ],
          items,
          { id: "experiments", empty: "No experiment yet." },
        ),
      ),
    );
    if (can(`PUT ${E}`)) {
      const versions = can(`GET ${P}/rules`) ? (await api.get(`${base}/rules`, { limit: VERSIONS_MAX })).items : [];
      target.append(createForm(base, versions, context));
    }
  },
};

const interval = (ci, percent = false) =>
  ci ? `[${ci.map((v) => (percent ? `${(100 * v).toFixed(1)}%` : v.toFixed(2))).join(", ")}]` : "—";
const signed = (v, percent = false) =>
  v === undefined ? "—" : `${v > 0 ? "+" : ""}${percent ? `${(100 * v).toFixed(1)}%` : v.toFixed(2)}`;

async function results(base, id, { api, can, refresh }) {
  const path = `${base}/experiments/${encodeURIComponent(id)}`;
  const [experiment, answer] = await Promise.all([api.get(path), api.get(`${path}/results`)]);
  const box = panel(
    `Experiment ${id}`,
    h("p", { id: "experiment-summary" }, badge(experiment.status, experiment.status === "running" ? "good" : ""),
      ` ${when(experiment.starts_at)} to ${when(experiment.ends_at)}`,
      experiment.ended_at ? `; ended ${when(experiment.ended_at)}` : "",
      experiment.promoted_arm ? `; promoted ${experiment.promoted_arm} as rules v${experiment.promoted_version}` : ""),
    table(
      [
        { label: "Arm", value: (a) => [a.arm, a.control ? " " : "", a.control ? badge("control") : null] },
        { label: "Members", value: (a) => number(a.members), num: true },
        { label: "Events", value: (a) => number(a.events), num: true },
        { label: "Points", value: (a) => number(a.points), num: true },
        { label: "Points per member", value: (a) => a.points_per_member.toFixed(2), num: true },
        { label: "Redemption rate", value: (a) => `${(100 * a.redemption_rate).toFixed(1)}%`, num: true },
        { label: "Δ points per member (95% CI)", value: (a) => (a.vs_control ? `${signed(a.vs_control.points_per_member)} ${interval(a.vs_control.points_per_member_ci95)}` : "—"), num: true },
        { label: "Δ redemption rate (95% CI)", value: (a) => (a.vs_control ? `${signed(a.vs_control.redemption_rate, true)} ${interval(a.vs_control.redemption_rate_ci95, true)}` : "—"), num: true },
      ],
      answer.arms,
      { id: "experiment-results" },
    ),
    h("p", { class: "muted" }, "Intervals need at least two members in the arm and in the control."),
  );
  box.id = "experiment";
  if (experiment.status === "running" && can(`POST ${E}/end`)) {
    const promote = h("select", { id: "promote", "aria-label": "Promote an arm" },
      h("option", { value: "" }, "end without promoting"),
      experiment.arms.map((arm) => h("option", { value: arm.name }, `promote ${arm.name} (rules v${arm.rule_version})`)));
    box.append(h("div", { class: "actions" }, promote, action("End", async () => {
      const chosen = promote.value || null;
      const sure = window.confirm(chosen
        ? `End ${id} now and make ${chosen}'s rules the program's rules?`
        : `End ${id} now? Later events use the rules in effect.`);
      if (!sure) return;
      const ended = await api.post(`${path}/end`, { promote: chosen });
      await refresh();
      showNotice(ended.promoted_arm ? `${id} ended: ${ended.promoted_arm}'s rules are now v${ended.promoted_version}.` : `${id} ended.`);
    }, { class: "danger", id: "end-experiment" })));
  }
  return box;
}

function isoIn(ms) {
  return new Date(Date.now() + ms).toISOString().replace(/\.\d+Z$/, "Z");
}

function createForm(base, versions, { api, navigate, params }) {
  if (versions.length === 0) {
    return panel("Start an experiment", h("p", { class: "muted" }, "The program needs a rule set first (Rules)."));
  }
  const newest = versions[0].version;
  const oldest = versions[versions.length - 1].version;
  const arms = h("tbody", { id: "arm-rows" });
  const armRow = (name, version, weight) => {
    const row = h("tr", {},
      h("td", {}, h("input", { name: "arm-name", value: name, required: true, "aria-label": "Arm name", maxlength: 64 })),
      h("td", {}, h("select", { name: "arm-version", "aria-label": "Rule set version" },
        versions.map((v) => h("option", { value: v.version, selected: v.version === version }, `v${v.version}`)))),
      h("td", {}, h("input", { name: "arm-weight", type: "number", min: 1, max: 100, step: 1, value: weight, required: true,
        "aria-label": "Weight (the weights add up to 100)", style: "width: 6rem" })),
      h("td", {}, h("button", { type: "button", class: "secondary", onclick: () => row.remove() }, "Remove")));
    return row;
  };
  arms.append(armRow("control", oldest === newest ? newest : Math.max(oldest, newest - 1), 50), armRow("candidate", newest, 50));
  const id = h("input", { id: "experiment-id", name: "experiment_id", required: true, pattern: "[A-Za-z0-9_.:-]{1,64}", placeholder: "double-orders" });
  const starts = h("input", { id: "experiment-starts", name: "starts_at", value: isoIn(0), required: true });
  const ends = h("input", { id: "experiment-ends", name: "ends_at", value: isoIn(30 * DAY_MS), required: true });
  const form = h("form", { id: "new-experiment" },
    h("div", { class: "inline" }, h("label", {}, "Id", id), h("label", {}, "Starts at (RFC 3339)", starts),
      h("label", {}, "Ends at", ends)),
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Arm (the first is the control)"),
      h("th", {}, "Rules"), h("th", {}, "Weight %"), h("th", {}, ""))), arms)),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", id: "add-arm", onclick: () => {
        if (arms.children.length < ARMS_MAX) arms.append(armRow(`arm${arms.children.length + 1}`, newest, ""));
      } }, "Add an arm"),
      h("button", { type: "submit" }, "Start")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const body = {
        arms: [...arms.children].map((row) => ({
          name: row.querySelector("[name=arm-name]").value.trim(),
          rule_version: Number(row.querySelector("[name=arm-version]").value),
          weight: Number(row.querySelector("[name=arm-weight]").value),
        })),
        starts_at: starts.value.trim(),
        ends_at: ends.value.trim(),
      };
      const made = await api.put(`${base}/experiments/${encodeURIComponent(id.value.trim())}`, body);
      navigate("/programs/:program/experiments", params, { id: made.experiment_id });
    } catch (error) {
      showError(error);
    } finally {
      submit.disabled = false;
    }
  });
  return panel("Start an experiment", h("p", { class: "muted" },
    "Each arm's members earn by that arm's rule set inside the window; the weights add up to 100."), form);
}
