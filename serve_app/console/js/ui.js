// DOM helpers shared by the pages: build elements, tables, badges; show problems.

// h("a", {href: "#/x", class: "y", onclick: f}, "text", child, ...): an element. Text is
// always set as text (never parsed as HTML): API data cannot inject markup.
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export const number = (value) =>
  value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US");

// "2026-11-30 12:00 UTC": one fixed form, whatever the browser's locale.
export function when(value) {
  if (!value) return "—";
  const moment = new Date(value);
  if (Number.isNaN(moment.getTime())) return String(value);
  return `${moment.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

const STATUS_TONES = {
  completed: "good",
  approved: "good",
  active: "good",
  pending: "warn",
  pending_review: "warn",
  pending_fulfillment: "warn",
  cancelled: "",
  rejected: "bad",
  failed: "bad",
  revoked: "bad",
};

export function badge(text, tone = STATUS_TONES[text] ?? "") {
  return h("span", { class: `badge ${tone}`.trim() }, text);
}

// columns: [{label, value: (row) => node or text, num: bool}]
export function table(columns, rows, { empty = "Nothing here yet.", id } = {}) {
  if (!rows.length) return h("p", { class: "muted", id }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { id },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(row)))),
        ),
      ),
    ),
  );
}

export function panel(title, ...children) {
  return h("section", { class: "panel" }, title ? h("h2", {}, title) : null, ...children);
}

export function card(label, value, attrs = {}) {
  return h("div", { class: "card", ...attrs }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

const flash = () => document.getElementById("flash");

// A problem from the API (or any error), shown above the page until dismissed or until
// the next navigation: title, detail, code and status, as the service said them.
export function showError(error) {
  const problem = error && error.title !== undefined ? error : { title: "Error", detail: String(error) };
  const code = problem.code ? h("code", {}, problem.code) : null;
  const status = problem.status ? `HTTP ${problem.status}` : null;
  clear(
    flash(),
    h(
      "div",
      { class: "problem", "data-code": problem.code || "" },
      h("div", {}, h("strong", {}, problem.title), problem.detail ? h("div", {}, problem.detail) : null,
        h("div", { class: "muted" }, [code, code && status ? " · " : "", status])),
      h("button", { class: "close", type: "button", "aria-label": "Dismiss", onclick: () => clear(flash()) }, "×"),
    ),
  );
}

export function showNotice(text) {
  clear(flash(), h("div", { class: "notice", role: "status" }, text));
}

export function clearFlash() {
  clear(flash());
}

// A button that runs an async action once at a time, showing problems it meets.
export function action(label, run, attrs = {}) {
  const button = h("button", { type: "button", ...attrs }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await run();
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}
