// The API client: every call carries the signed-in key as a Bearer token; every error is
// an ApiError made from the answer's application/problem+json (RFC 9457) body, so pages
// show the service's own title, detail and code.

const KEY_STORAGE = "points.console.key";
// Lists are read a page at a time; the API's page size bound is 200 (domain/limits.py).
export const PAGE_SIZE_MAX = 200;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.title = problem.title || `HTTP ${status}`;
    this.detail = problem.detail || "";
    this.code = problem.code || null;
    this.problem = problem;
  }
}

export const session = {
  key() {
    return sessionStorage.getItem(KEY_STORAGE);
  },
  save(key) {
    sessionStorage.setItem(KEY_STORAGE, key);
  },
  forget() {
    sessionStorage.removeItem(KEY_STORAGE);
  },
};

// A path from a template and its parameters, each one URL-encoded:
// path("/v1/programs/{program_id}", {program_id: "shop"}).
export function path(template, params = {}) {
  return template.replace(/\{(\w+)\}/g, (_, name) => {
    if (params[name] === undefined) throw new Error(`missing path parameter ${name}`);
    return encodeURIComponent(params[name]);
  });
}

function withQuery(url, query) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `${url}?${text}` : url;
}

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      return await response.json();
    } catch {
      // fall through: a body that says JSON but is not
    }
  }
  const text = await response.text().catch(() => "");
  return { title: `HTTP ${response.status}`, detail: text.slice(0, 300) };
}

// Listeners told when the key is refused (401): the app signs out.
const unauthorizedListeners = [];
export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

export async function request(method, url, { query, body, headers, key } = {}) {
  const sent = { Accept: "application/json", ...headers };
  const token = key ?? session.key();
  if (token) sent.Authorization = `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    sent["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(withQuery(url, query), { method, headers: sent, body: payload });
  } catch (error) {
    throw new ApiError(0, { title: "The service does not answer", detail: String(error) });
  }
  if (!response.ok) {
    const error = new ApiError(response.status, await problemOf(response));
    if (response.status === 401 && key === undefined) unauthorizedListeners.forEach((f) => f(error));
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

export const api = {
  get: (url, query) => request("GET", url, { query }),
  post: (url, body, headers) => request("POST", url, { body, headers }),
  put: (url, body, headers) => request("PUT", url, { body, headers }),
  delete: (url) => request("DELETE", url),
  // Every item of a keyset-paginated list, up to `itemsMax` (then `truncated`).
  async all(url, query, itemsMax) {
    const items = [];
    let cursor = null;
    do {
      const page = await api.get(url, { ...query, limit: PAGE_SIZE_MAX, cursor });
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && items.length < itemsMax);
    return { items: items.slice(0, itemsMax), truncated: Boolean(cursor) || items.length > itemsMax };
  },
};

// A file the API answers in another format (a report as CSV: `Accept: text/csv`), with the
// signed-in key, saved through a blob URL under the name its Content-Disposition gives.
export async function download(url, query, { accept = "text/csv", filename = "download" } = {}) {
  const sent = { Accept: accept };
  const token = session.key();
  if (token) sent.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(withQuery(url, query), { headers: sent });
  } catch (error) {
    throw new ApiError(0, { title: "The service does not answer", detail: String(error) });
  }
  if (!response.ok) {
    const error = new ApiError(response.status, await problemOf(response));
    if (response.status === 401) unauthorizedListeners.forEach((f) => f(error));
    throw error;
  }
  const disposition = response.headers.get("content-disposition") || "";
  const named = /filename="?([^";]+)"?/i.exec(disposition);
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = named ? named[1] : filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // The browser has taken the blob once the click is handled; free it soon after.
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  return { filename: link.download, size: blob.size };
}

// A random Idempotency-Key for a write the user asked for once (a retry of the same click
// reuses the key the button holds).
export function idempotencyKey(prefix) {
  const random = crypto.getRandomValues(new Uint32Array(2));
  return `${prefix}-${Date.now().toString(36)}-${random[0].toString(36)}${random[1].toString(36)}`;
}
