// The run list: filters, counts by status, pages, drawn again every two seconds.

import { STATUSES, h, api, time, status, runLink, fill, show, drawn } from "./dom.js";

const WINDOWS = { "": "any time", "1h": "last hour", "24h": "last day", "7d": "last week" };
const WINDOW_MS = { "1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000 };

export async function runsView(query) {
  const filters = {
    status: query.get("status") || "",
    workflow: query.get("workflow") || "",
    label: query.get("label") || "",
    since: query.get("since") || "",
  };
  const cursors = [null];
  const go = (changes) => {
    const next = new URLSearchParams({ ...filters, ...changes });
    for (const [name, value] of [...next]) if (!value) next.delete(name);
    location.hash = `#/runs?${next}`;
  };
  const search = h("input", { name: "run_id", placeholder: "a run id", size: 30 });
  const form = h(
    "form",
    {
      class: "filters panel",
      onsubmit: (event) => {
        event.preventDefault();
        const data = new FormData(form);
        if (data.get("run_id")) location.hash = `#/runs/${encodeURIComponent(data.get("run_id").trim())}`;
        else
          go({
            status: data.get("status"),
            workflow: data.get("workflow"),
            label: data.get("label"),
            since: data.get("since"),
          });
      },
    },
    h(
      "label",
      {},
      "Status",
      h(
        "select",
        { name: "status" },
        h("option", { value: "" }, "any"),
        STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)),
      ),
    ),
    h("label", {}, "Workflow", h("input", { name: "workflow", value: filters.workflow })),
    h("label", {}, "Label", h("input", { name: "label", value: filters.label })),
    h(
      "label",
      {},
      "Created",
      h(
        "select",
        { name: "since" },
        Object.entries(WINDOWS).map(([value, text]) => h("option", { value, selected: value === filters.since }, text)),
      ),
    ),
    h("label", {}, "Or find a run", search),
    h("button", { type: "submit" }, "Show"),
  );
  const counts = h("div", { class: "counts", "aria-label": "runs by status" });
  const table = h("div");
  const pager = h("div", { class: "pager" });
  show(h("h1", {}, "Runs"), form, counts, table, pager);

  const params = (page) => {
    const query = new URLSearchParams({ limit: "50" });
    if (filters.status) query.set("status", filters.status);
    if (filters.workflow) query.set("workflow", filters.workflow);
    if (filters.label) query.set("label", filters.label);
    if (WINDOW_MS[filters.since]) query.set("created_after", String(Date.now() - WINDOW_MS[filters.since]));
    if (cursors[page]) query.set("cursor", cursors[page]);
    return query;
  };
  let page = 0;
  const draw = async () => {
    const query = params(page);
    const countQuery = new URLSearchParams(query);
    for (const name of ["status", "limit", "cursor"]) countQuery.delete(name);
    const [list, tally] = await Promise.all([api(`/v1/runs?${query}`), api(`/v1/runs/counts?${countQuery}`)]);
    fill(
      counts,
      h(
        "a",
        {
          href: "#",
          class: filters.status ? "" : "chosen",
          onclick: (event) => (event.preventDefault(), go({ status: "" })),
        },
        `all ${tally.total}`,
      ),
      STATUSES.map((s) =>
        h(
          "a",
          {
            href: "#",
            class: filters.status === s ? "chosen" : "",
            dataset: { status: s },
            onclick: (event) => (event.preventDefault(), go({ status: s })),
          },
          `${s} ${tally.counts[s]}`,
        ),
      ),
    );
    fill(
      table,
      list.runs.length === 0
        ? h("p", { class: "muted" }, "No runs match.")
        : h(
            "table",
            { class: "runs" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["Run", "Workflow", "Status", "Label", "Steps", "Created", "Updated"].map((name) => h("th", {}, name)),
              ),
            ),
            h(
              "tbody",
              {},
              list.runs.map((run) =>
                h(
                  "tr",
                  { dataset: { runId: run.run_id } },
                  h("td", {}, runLink(run.run_id)),
                  h("td", {}, run.workflow),
                  h("td", {}, status(run.status), run.dead_letter ? " dead letter" : ""),
                  h("td", {}, run.label ?? ""),
                  h("td", {}, run.steps),
                  h("td", {}, time(run.created_at_ms)),
                  h("td", {}, time(run.updated_at_ms)),
                ),
              ),
            ),
          ),
    );
    cursors[page + 1] = list.next_cursor;
    fill(
      pager,
      h("button", { disabled: page === 0, onclick: () => ((page -= 1), draw()) }, "Newer"),
      h("span", { class: "muted" }, `page ${page + 1}`),
      h("button", { disabled: !list.next_cursor, onclick: () => ((page += 1), draw()) }, "Older"),
    );
  };
  return drawn(table, draw); // live: the page in view is drawn again every two seconds
}
