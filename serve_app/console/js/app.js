// The console's shell: sign-in, the navigation, and a hash router over the pages that
// js/pages/index.js registers. A page is shown only to a key whose role may call the
// route it needs (the `routes` of GET /v1/me: serve_app/access.py's matrix for the role).
import { api, ApiError, onUnauthorized, request, session } from "./api.js";
import { destroyCharts } from "./charts.js";
import { PAGES } from "./pages/index.js";
import { clear, clearFlash, h, showError } from "./ui.js";

const view = () => document.getElementById("view");
const nav = () => document.getElementById("nav");
const state = { me: null, programs: [] };

// What the signed-in key may do: can("POST /v1/programs/{program_id}/redemptions/{redemption_id}/cancel").
export function can(route) {
  return Boolean(state.me && state.me.routes.includes(route));
}

// "/programs/:program/members/:member" -> a matcher of "#/programs/shop/members/alice".
function compile(pattern) {
  const names = [];
  const source = pattern.replace(/:(\w+)/g, (_, name) => {
    names.push(name);
    return "([^/]+)";
  });
  const regex = new RegExp(`^${source}$`);
  return (pathText) => {
    const found = regex.exec(pathText);
    if (!found) return null;
    return Object.fromEntries(names.map((name, i) => [name, decodeURIComponent(found[i + 1])]));
  };
}

const ROUTES = PAGES.map((page) => ({ page, match: compile(page.route) }));

export function href(pattern, params = {}, query = {}) {
  const pathText = pattern.replace(/:(\w+)/g, (_, name) => encodeURIComponent(params[name]));
  const search = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  const text = search.toString();
  return `#${pathText}${text ? `?${text}` : ""}`;
}

export function navigate(pattern, params, query) {
  location.hash = href(pattern, params, query);
}

function current() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [pathText, queryText = ""] = raw.split("?");
  return { pathText, query: Object.fromEntries(new URLSearchParams(queryText)) };
}

function signedOut() {
  state.me = null;
  document.querySelector(".layout").classList.add("signed-out");
  nav().hidden = true;
  document.getElementById("menu-toggle").hidden = true;
  document.getElementById("sign-out").hidden = true;
  clear(document.getElementById("whoami"));
  destroyCharts();
  const input = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off",
    required: true, placeholder: "pts_…", spellcheck: "false" });
  const form = h(
    "form",
    {
      id: "sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        const key = input.value.trim();
        try {
          // The key is checked before it is kept: a wrong one is never stored.
          const me = await request("GET", "/v1/me", { key });
          session.save(key);
          await signedIn(me);
        } catch (error) {
          showError(error);
        }
      },
    },
    h("label", { for: "api-key" }, "API key", input),
    h("button", { type: "submit" }, "Sign in"),
  );
  clear(
    view(),
    h(
      "div",
      { class: "signin panel" },
      h("h1", {}, "Sign in"),
      h("p", { class: "muted" }, "With an API key: the admin key printed by ",
        h("code", {}, "points up"), ", or one from ", h("code", {}, "points keys create"),
        ". It is kept in this tab only (sessionStorage) and sent as a Bearer token."),
      form,
    ),
  );
  input.focus();
}

async function signedIn(me) {
  state.me = me;
  state.programs = me.programs;
  document.querySelector(".layout").classList.remove("signed-out");
  clear(document.getElementById("whoami"), `${me.name} · ${me.role}`);
  document.getElementById("whoami").dataset.role = me.role;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("menu-toggle").hidden = false;
  nav().hidden = false;
  clearFlash();
  await route();
}

function programOf(params) {
  return params.program || sessionStorage.getItem("points.console.program") || null;
}

function renderNav(activePage, params) {
  const program = programOf(params);
  const link = (page) =>
    h("a", {
      href: href(page.route, { program }),
      class: page === activePage ? "active" : null,
      "data-page": page.id,
      onclick: () => nav().classList.remove("open"),
    }, page.title);
  const visible = (page) => page.nav && (!page.needs || can(page.needs));
  const global = PAGES.filter((page) => page.scope === "global" && visible(page));
  const scoped = PAGES.filter((page) => page.scope === "program" && visible(page));
  clear(
    nav(),
    h("h3", {}, "Service"),
    global.map(link),
    program ? [h("h3", {}, `Program ${program}`), scoped.map(link)] : null,
  );
}

let rendering = 0;

async function route() {
  if (!state.me) return signedOut();
  const { pathText, query } = current();
  let matched = null;
  for (const { page, match } of ROUTES) {
    const params = match(pathText);
    if (params) {
      matched = { page, params };
      break;
    }
  }
  if (!matched) {
    location.replace("#/programs");
    return;
  }
  const { page, params } = matched;
  if (params.program) sessionStorage.setItem("points.console.program", params.program);
  renderNav(page, params);
  destroyCharts();
  clearFlash();
  const turn = ++rendering;
  const target = h("div", { "data-page": page.id });
  clear(view(), target);
  document.title = `${page.title} · Points console`;
  if (page.needs && !can(page.needs)) {
    clear(target, h("h1", {}, page.title), h("p", { class: "muted" },
      `A ${state.me.role} key may not open this page.`));
    return;
  }
  const context = { params, query, api, can, href, navigate, me: state.me, refresh: route,
    stale: () => turn !== rendering };
  try {
    await page.render(target, context);
  } catch (error) {
    if (turn === rendering) showError(error instanceof ApiError ? error : { title: "Error", detail: String(error) });
  }
}

function start() {
  document.getElementById("sign-out").addEventListener("click", () => {
    session.forget();
    sessionStorage.removeItem("points.console.program");
    signedOut();
  });
  document.getElementById("menu-toggle").addEventListener("click", (event) => {
    const open = nav().classList.toggle("open");
    event.currentTarget.setAttribute("aria-expanded", String(open));
  });
  onUnauthorized((error) => {
    session.forget();
    signedOut();
    showError(error);
  });
  window.addEventListener("hashchange", route);
  const key = session.key();
  if (!key) return signedOut();
  request("GET", "/v1/me")
    .then(signedIn)
    .catch((error) => {
      signedOut();
      showError(error);
    });
}

start();
