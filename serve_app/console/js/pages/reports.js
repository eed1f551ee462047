// The six reports of a program (docs/reports.md), each as a table, for one window picked
// by from / to / granularity (the hash's query; empty: the API's defaults), each with a
// "Download CSV" button (the same report as `Accept: text/csv`, saved through a blob URL).
import { download } from "../api.js";
import { action, h, number, panel, showNotice, table, when } from "../ui.js";

const P = "/v1/programs/{program_id}";
const GRANULARITIES = ["day", "week", "month"];
const WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

// Each report: the route it reads (`needs`: the unit test holds these to the access matrix),
// its title and what it says in a line; every column of its rows is shown.
export const REPORTS = [
  { name: "liability", needs: `GET ${P}/reports/liability`, title: "Liability", about: "Points members hold, rolled forward per period, in points and in money." },
  { name: "breakage", needs: `GET ${P}/reports/breakage`, title: "Breakage", about: "Per cohort of issued points: what was redeemed, expired, reversed, is left." },
  { name: "expiring", needs: `GET ${P}/reports/expiring`, title: "Expiring", about: "Points that will expire, per period, from the open lots." },
  { name: "funnel", needs: `GET ${P}/reports/funnel`, title: "Funnel", about: "Per cohort of members (first credit): earned, reached a reward, redeemed once, twice." },
  { name: "rewards", needs: `GET ${P}/reports/rewards`, title: "Rewards", about: "Redemptions started in the window, by reward, and when (weekday × hour)." },
  { name: "members", needs: `GET ${P}/reports/members`, title: "Members", about: "Members now, active ones, by tier, and new members per period." },
];

export default {
  id: "reports",
  title: "Reports",
  route: "/programs/:program/reports",
  scope: "program",
  nav: true,
  needs: `GET ${P}/reports/liability`,
  async render(target, { api, can, navigate, params, query }) {
    const base = `/v1/programs/${encodeURIComponent(params.program)}`;
    const span = { from: query.from, to: query.to, granularity: query.granularity };
    target.append(h("h1", {}, "Reports"), picker(span, (picked) =>
      navigate("/programs/:program/reports", { program: params.program }, picked)));
    const shown = REPORTS.filter((report) => can(report.needs));
    // Read together: six small queries (each one snapshot of the database).
    const answers = await Promise.all(shown.map((report) =>
      api.get(`${base}/reports/${report.name}`, span).then((body) => ({ body }), (error) => ({ error }))));
    shown.forEach((report, i) => {
      const { body, error } = answers[i];
      const csv = action("Download CSV", async () => {
        const saved = await download(`${base}/reports/${report.name}`, span,
          { filename: `${params.program}-${report.name}.csv` });
        showNotice(`${saved.filename} saved (${number(saved.size)} bytes).`);
      }, { class: "secondary", "data-csv": report.name });
      const box = panel(report.title, h("p", { class: "muted" }, report.about), csv);
      box.id = `report-${report.name}`;
      if (error) {
        box.append(h("p", { class: "bad" }, `${error.title}: ${error.detail}`));
      } else {
        box.append(h("p", { class: "muted", "data-window": report.name },
          `${body.from} to ${body.to} by ${body.granularity}; as of ${when(body.as_of)}.`),
        ...details(report.name, body));
      }
      target.append(box);
    });
  },
};

// The window picker: from, to (dates) and granularity, applied to every report.
function picker(span, apply) {
  const from = h("input", { type: "date", id: "report-from", name: "from", value: span.from || "" });
  const to = h("input", { type: "date", id: "report-to", name: "to", value: span.to || "" });
  const granularity = h("select", { id: "report-granularity", name: "granularity" },
    h("option", { value: "" }, "default"),
    GRANULARITIES.map((g) => h("option", { value: g, selected: g === span.granularity }, g)));
  const form = h("form", { class: "inline", id: "report-window" },
    h("label", {}, "From", from), h("label", {}, "To", to), h("label", {}, "Granularity", granularity),
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply({ from: from.value, to: to.value, granularity: granularity.value });
  });
  return panel(null, form, h("p", { class: "muted" },
    "Empty: the API's defaults (the last 12 months; expiring looks ahead 12 months)."));
}

// A table of rows whose columns are the rows' own fields (numbers to the right).
export function rowsTable(rows, id, empty = "Nothing in this window.") {
  if (!rows || !rows.length) return table([], [], { id, empty });
  const columns = Object.keys(rows[0]).map((key) => ({
    label: key.replaceAll("_", " "),
    num: typeof rows[0][key] === "number" || /(_money|_rate|^share$|per_point)$/.test(key),
    value: (row) => (typeof row[key] === "number" ? number(row[key]) : row[key] ?? "—"),
  }));
  return table(columns, rows, { id, empty });
}

function facts(pairs) {
  return h("p", { class: "facts" }, pairs.filter(([, v]) => v !== undefined)
    .map(([k, v]) => h("span", {}, h("span", { class: "muted" }, `${k}: `), v === null ? "—" : String(v), " ")));
}

function details(name, body) {
  const id = `report-${name}-table`;
  switch (name) {
    case "liability":
      return [facts([["currency", body.currency], ["breakage rate", `${body.breakage_rate} (${body.breakage_rate_source})`]]),
        rowsTable(body.rows, id)];
    case "breakage":
      return [facts([["breakage rate", `${body.breakage_rate} (${body.breakage_rate_source})`]]),
        rowsTable([...body.rows, ...(body.rows.length ? [body.totals] : [])], id)];
    case "expiring":
      return [facts([["total points", number(body.total_points)], ["overdue points", number(body.overdue.points)],
        ["overdue lots", number(body.overdue.lots)]]), rowsTable(body.rows, id)];
    case "funnel":
      return [facts([["cheapest reward (points)", body.cheapest_reward_points]]), rowsTable(body.rows, id)];
    case "rewards":
      return [facts([["time zone", body.time_zone],
        ["failures", Object.entries(body.failures).map(([k, v]) => `${k} ${v}`).join(", ") || "none"]]),
      rowsTable(body.rows, id, "No redemption in this window."), h("h3", {}, "When (weekday × hour)"), heatmap(body.heatmap)];
    case "members":
      return [facts([["members", number(body.members)], ["active 30 days", number(body.active["30d"])],
        ["active 90 days", number(body.active["90d"])]]),
      rowsTable(body.tiers.map((t) => ({ ...t, tier: t.tier ?? "no tier" })), `${id}-tiers`, "No member yet."),
      rowsTable(body.rows, id)];
    default:
      return [rowsTable(body.rows, id)];
  }
}

// The rewards report's weekday × hour counts as a grid of cells shaded by their count
// (a table: each cell says its count in its title and as text for screen readers).
export function heatmap(map) {
  const counts = map.counts;
  const most = Math.max(0, ...counts.flat());
  const hours = Array.from({ length: 24 }, (_, hour) => hour);
  const grid = h("table", { class: "heatmap", "data-heatmap": "rewards", "aria-label": "Redemptions started by weekday and hour" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), hours.map((hour) => h("th", { scope: "col" }, String(hour))))),
    h("tbody", {}, counts.map((row, day) => h("tr", {},
      h("th", { scope: "row" }, WEEKDAYS[day] || map.weekdays[day]),
      row.map((count, hour) => {
        const cell = h("td", { title: `${WEEKDAYS[day]} ${hour}:00: ${count}`, "data-count": count },
          h("span", { class: "sr" }, String(count)));
        // Shade: from the panel's white (none) to the accent (the busiest hour).
        if (count) cell.style.backgroundColor = `rgba(37, 99, 235, ${(0.15 + 0.85 * (count / most)).toFixed(3)})`;
        return cell;
      })))));
  return h("div", { class: "table-wrap" }, grid,
    h("p", { class: "muted" }, most ? `Darkest: ${number(most)} redemptions in one hour of the week.` : "No redemption in this window."));
}

// Decimal strings of minor units as a number of major units of `currency` (EUR: cents → euros).
export function major(minor, currency) {
  if (minor === null || minor === undefined) return null;
  let digits = 2;
  try {
    digits = new Intl.NumberFormat("en-US", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
  } catch {
    // an unknown code: keep two places
  }
  return Number(minor) / 10 ** digits;
}

