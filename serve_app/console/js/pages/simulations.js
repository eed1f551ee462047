// What-if replay of earning rules (docs/simulations.md): candidate rules (prefilled with
// the program's newest rule set) and a window; the job is polled while it runs (progress),
// then its result: totals, per rule, per tier, per event type, the most affected members.
import { badge, card, clear, h, number, panel, showError, table, when } from "../ui.js";

const P = "/v1/programs/{program_id}";
const POLL_MS = 1000;
const DAY_MS = 86_400_000;
const LIVE = ["queued", "running"];

export default {
  id: "simulations",
  title: "Simulations",
  route: "/programs/:program/simulations",
  scope: "program",
  nav: true,
  needs: `GET ${P}/simulations/{simulation_id}`,
  async render(target, context) {
    const { api, can, params, query } = context;
    const base = `/v1/programs/${encodeURIComponent(params.program)}`;
    target.append(h("h1", {}, "Simulations"));
    if (query.id) {
      const box = h("section", { class: "panel", id: "simulation" });
      target.append(box);
      // Polled in the background: the form below is usable while the job runs.
      follow(box, `${base}/simulations/${encodeURIComponent(query.id)}`, context).catch((error) => {
        if (!context.stale()) showError(error);
      });
    }
    if (can(`POST ${P}/simulations`)) {
      const latest = can(`GET ${P}/rules`) ? (await api.get(`${base}/rules`, { limit: 1 })).items[0] : null;
      target.append(startForm(base, latest, context));
    } else if (!query.id) {
      target.append(panel(null, h("p", { class: "muted" }, "Admins and operators start simulations; open one by its link.")));
    }
  },
};

const iso = (ms) => new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");

function startForm(base, latest, { api, navigate, params }) {
  const rules = h("textarea", { id: "simulation-rules", name: "rules", rows: 14, spellcheck: "false", class: "mono" },
    JSON.stringify(latest ? latest.rules : [], null, 2));
  const from = h("input", { id: "simulation-from", name: "from", value: iso(Date.now() - 30 * DAY_MS), required: true });
  const to = h("input", { id: "simulation-to", name: "to", value: iso(Date.now() + 3_600_000), required: true });
  const top = h("input", { id: "simulation-top", name: "top_members", type: "number", min: 1, max: 100, value: 10, style: "width: 6rem" });
  const form = h("form", { id: "new-simulation", class: "stack" },
    h("label", {}, latest ? `Candidate rules (prefilled with rules v${latest.version}, in effect now or next)` : "Candidate rules (JSON)", rules),
    h("div", { class: "inline" }, h("label", {}, "Events from (RFC 3339, inclusive)", from),
      h("label", {}, "To (exclusive)", to), h("label", {}, "Most affected members", top),
      h("button", { type: "submit" }, "Start")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      let candidate;
      try {
        candidate = JSON.parse(rules.value);
      } catch (error) {
        throw { title: "The rules are not JSON", detail: String(error.message || error) };
      }
      const job = await api.post(`${base}/simulations`, {
        rules: candidate, from: from.value.trim(), to: to.value.trim(), top_members: Number(top.value),
      });
      navigate("/programs/:program/simulations", params, { id: job.simulation_id });
    } catch (error) {
      showError(error);
    } finally {
      submit.disabled = false;
    }
  });
  return panel("Replay the stored events through other rules", h("p", { class: "muted" },
    "Nothing is written: the result compares what the events were awarded with what these rules would award."), form);
}

// Read the job until it is done or failed (or the page is left), showing each state.
async function follow(box, path, { api, stale }) {
  for (;;) {
    const job = await api.get(path);
    if (stale() || !box.isConnected) return;
    show(box, job);
    if (!LIVE.includes(job.status)) return;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    if (stale() || !box.isConnected) return;
  }
}

function show(box, job) {
  const { events_done: done, events_total: total } = job.progress || {};
  const tone = { done: "good", failed: "bad", running: "warn", queued: "warn" }[job.status] || "";
  clear(
    box,
    h("h2", {}, "Simulation ", h("code", {}, job.simulation_id)),
    h("p", { id: "simulation-status", "data-status": job.status }, badge(job.status, tone),
      ` events from ${when(job.from)} to ${when(job.to)}; started ${when(job.started_at || job.created_at)}`,
      job.finished_at ? `, finished ${when(job.finished_at)}` : ""),
    LIVE.includes(job.status)
      ? h("div", { id: "simulation-progress" },
        h("progress", { max: total || 1, value: total ? done : 0 }),
        ` ${number(done)} of ${total === null || total === undefined ? "…" : number(total)} events`)
      : null,
    job.status === "failed" ? h("p", { class: "bad" }, job.error || "The job failed.") : null,
    job.status === "done" && job.result ? result(job.result) : null,
  );
}

const diffCell = (v) => h("span", { class: v > 0 ? "good" : v < 0 ? "bad" : "" }, `${v > 0 ? "+" : ""}${number(v)}`);
const pointColumns = [
  { label: "Actual", value: (r) => number(r.actual_points), num: true },
  { label: "Candidate", value: (r) => number(r.candidate_points), num: true },
  { label: "Difference", value: (r) => diffCell(r.difference), num: true },
];
const events = { label: "Events", value: (r) => number(r.events), num: true };

function result(r) {
  return h(
    "div",
    { id: "simulation-result" },
    h("div", { class: "cards" },
      card("Events replayed", number(r.events)), card("Members", number(r.members)),
      card("Events changed", number(r.events_changed)), card("Actual points", number(r.actual_points)),
      card("Candidate points", number(r.candidate_points)), card("Difference", diffCell(r.difference), { id: "simulation-difference" })),
    r.events_invalid ? h("p", { class: "warn" }, `${number(r.events_invalid)} stored events the rules refuse (counted as 0).`) : null,
    h("div", { class: "grid halves" },
      panel("Per rule", table([{ label: "Rule", value: (x) => x.rule_id }, ...pointColumns], r.by_rule, { id: "sim-by-rule" })),
      panel("Per tier", table([{ label: "Tier", value: (x) => x.tier ?? "no tier" }, events, ...pointColumns], r.by_tier, { id: "sim-by-tier" }),
        r.tiers_from ? h("p", { class: "muted" }, `Tier known from: explanation ${number(r.tiers_from.explanation)}, tier changes ${number(r.tiers_from.tier_changes)}, current ${number(r.tiers_from.current)}.`) : null),
      panel("Per event type", table([{ label: "Event type", value: (x) => x.event_type }, events, ...pointColumns], r.by_event_type, { id: "sim-by-type" })),
      panel("Most affected members", table([{ label: "Member", value: (x) => x.member_id }, events, ...pointColumns], r.top_members,
        { id: "sim-top-members", empty: "No member's points would change." }))),
  );
}
