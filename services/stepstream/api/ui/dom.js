// What every view of the dashboard uses: building elements, talking to the api, formatting.
// h() sets text, never HTML, so nothing a run carries (payloads, errors, labels) can become markup.

export const STATUSES = ["scheduled", "running", "sleeping", "waiting", "completed", "failed", "cancelled"];
export const ENDED = new Set(["completed", "failed", "cancelled"]);
export const REFRESH_MS = 2000; // how often a view draws itself again

const main = document.getElementById("main");

// ---------------------------------------------------------------------------------------

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

// The api wants a token (docs/security.md): asked for once, kept in this browser's storage, sent with
// every request. The cookie carries it for the history stream, which EventSource opens without
// headers; the api accepts a cookie for reads only, so another site cannot make this browser change
// anything with it.
const TOKEN_KEY = "stepstream.token";
export const token = {
  get: () => localStorage.getItem(TOKEN_KEY),
  set(value) {
    localStorage.setItem(TOKEN_KEY, value);
    document.cookie = `stepstream_token=${encodeURIComponent(value)}; path=/; SameSite=Strict`;
  },
  clear() {
    localStorage.removeItem(TOKEN_KEY);
    document.cookie = "stepstream_token=; path=/; SameSite=Strict; max-age=0";
  },
};
if (token.get()) token.set(token.get()); // the cookie lasts a browser session, the storage longer

function askForToken(message) {
  if (document.querySelector("dialog.token")) return;
  const input = h("input", { type: "password", name: "token", autocomplete: "off", required: true });
  const dialog = h(
    "dialog",
    { class: "token" },
    h(
      "form",
      {
        method: "dialog",
        onsubmit: () => {
          token.set(input.value.trim());
          location.reload();
        },
      },
      h("h2", {}, "This api wants a token"),
      h("p", { class: "muted" }, message),
      h("p", {}, "`make dev` prints where the local one is; `stepstream token new` makes others."),
      h("label", {}, "Token ", input),
      h("button", { type: "submit" }, "Use this token"),
    ),
  );
  document.body.append(dialog);
  dialog.showModal();
}

export async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...options.headers };
  if (token.get()) headers.Authorization = `Bearer ${token.get()}`;
  const response = await fetch(path, { ...options, headers });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const message = body?.message || `${response.status} ${response.statusText}`;
    if (response.status === 401) askForToken(message);
    throw new Error(message);
  }
  return body;
}

export function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body ?? {}),
  });
}

export const time = (ms) => (ms ? new Date(ms).toLocaleString() : "");
export const status = (value) => h("span", { class: `status ${value}` }, value);
export const runLink = (runId) => h("a", { href: `#/runs/${encodeURIComponent(runId)}`, class: "mono" }, runId);
export const json = (value) => h("pre", { class: "mono" }, JSON.stringify(value, null, 2));

export function duration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${(ms / 60_000).toFixed(1)} min`;
  if (ms < 86_400_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  return `${(ms / 86_400_000).toFixed(1)} d`;
}

// replaceChildren() does not flatten arrays (it would show "[object HTMLElement]"): fill() does.
export function fill(element, ...children) {
  element.replaceChildren(
    ...children.flat(Infinity).filter((child) => child !== null && child !== undefined && child !== false),
  );
}

export function show(...children) {
  fill(main, ...children);
}

export function failure(error) {
  return h("p", { class: "error", role: "alert" }, String(error.message || error));
}

// A view's first drawing (its error shown in ``place`` if it fails), then, with ``live``, a drawing every
// REFRESH_MS; returns what stops it.
export async function drawn(place, draw, { live = true } = {}) {
  try {
    await draw();
  } catch (error) {
    fill(place, failure(error));
  }
  return live ? every(REFRESH_MS, draw) : () => {};
}

export function every(ms, work) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      await work();
    } catch (error) {
      console.warn(error);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function confirmed(question) {
  return window.confirm(question);
}
