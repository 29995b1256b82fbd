// The dashboard: a page per view (runs, a run, dead letters, waiters, flow-control keys), drawn in the
// browser from the api's public endpoints only, so it shows what any client of the api could see.
// No framework and no build step (docs/decisions/0013): each view is a function that fetches JSON and
// draws with dom.js, and returns what stops its refreshes when another view is shown.

import { deadLetterView, flowView, waitersView } from "./lists.js";
import { runView } from "./run.js";
import { runsView } from "./runs.js";

let leave = () => {};
let shown = 0; // counts the views shown, so a view that resolves after the next was shown stops at once

function view(path, query) {
  const parts = path.split("/").filter(Boolean);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("current", link.dataset.nav === parts[0]);
  }
  if (parts[0] === "runs" && parts[1]) return runView(decodeURIComponent(parts.slice(1).join("/")));
  if (parts[0] === "deadletter") return deadLetterView();
  if (parts[0] === "waiters") return waitersView(query);
  if (parts[0] === "flow") return flowView();
  return runsView(query);
}

async function route() {
  leave();
  leave = () => {};
  const current = ++shown;
  const [path, search] = (location.hash.slice(1) || "/runs").split("?");
  const stop = (await view(path, new URLSearchParams(search || ""))) || (() => {});
  if (current === shown) leave = stop;
  else stop();
}

window.addEventListener("hashchange", route);
route();
