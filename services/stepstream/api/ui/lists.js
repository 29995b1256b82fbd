// The dead letters, the waiters of an event id, and the flow-control keys.

import { h, api, post, time, runLink, duration, fill, show, drawn, confirmed } from "./dom.js";

export async function deadLetterView() {
  const body = h("div");
  show(
    h("h1", {}, "Dead letters"),
    h("p", { class: "muted" }, "Runs that failed, until an operator resumes, restarts or deletes them."),
    body,
  );
  const draw = async () => {
    const list = await api("/v1/deadletter?limit=200");
    const chosen = () => [...body.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value);
    const bulk = (action, text) =>
      h(
        "button",
        {
          dataset: { bulk: action },
          onclick: async () => {
            const runIds = chosen();
            if (!runIds.length || !confirmed(`${text} ${runIds.length} runs?`)) return;
            for (const runId of runIds)
              await post(`/v1/deadletter/${encodeURIComponent(runId)}/${action}`, { reason: "from the dashboard" });
            await draw();
          },
        },
        `${text} the chosen`,
      );
    fill(
      body,
      list.runs.length === 0
        ? h("p", { class: "muted" }, "The list is empty.")
        : [
            h("div", { class: "actions" }, bulk("resume", "Resume"), bulk("restart", "Restart")),
            h(
              "table",
              {},
              h(
                "thead",
                {},
                h(
                  "tr",
                  {},
                  ["", "Run", "Workflow", "Error", "Failed"].map((name) => h("th", {}, name)),
                ),
              ),
              h(
                "tbody",
                {},
                list.runs.map((run) =>
                  h(
                    "tr",
                    { dataset: { runId: run.run_id } },
                    h(
                      "td",
                      {},
                      h("input", { type: "checkbox", value: run.run_id, "aria-label": `choose ${run.run_id}` }),
                    ),
                    h("td", {}, runLink(run.run_id)),
                    h("td", {}, run.workflow),
                    h(
                      "td",
                      { class: "mono" },
                      run.error ? `${run.error.type}: ${run.error.message}`.slice(0, 200) : "",
                    ),
                    h("td", {}, time(run.updated_at_ms)),
                  ),
                ),
              ),
            ),
          ],
    );
  };
  return drawn(body, draw, { live: false }); // drawn again after an action
}

export async function waitersView(query) {
  const eventId = query.get("event_id") || "";
  const input = h("input", {
    name: "event_id",
    value: eventId,
    size: 40,
    placeholder: "an event id, such as payment-42",
  });
  const result = h("div");
  show(
    h("h1", {}, "Waiters"),
    h(
      "form",
      {
        class: "filters panel",
        onsubmit: (event) => (
          event.preventDefault(),
          (location.hash = `#/waiters?event_id=${encodeURIComponent(input.value.trim())}`)
        ),
      },
      h("label", {}, "Event id (empty: every waiting run)", input),
      h("button", { type: "submit" }, "Show"),
    ),
    result,
  );
  const draw = async () => {
    // One event id's waiters, or every waiting run, the next to time out first.
    const path = eventId ? `/v1/events/${encodeURIComponent(eventId)}/waiters` : "/v1/waiters?limit=200";
    const answer = await api(path);
    const none = eventId ? `No run waits on ${eventId}.` : "No run waits on an event.";
    fill(
      result,
      answer.waiters.length === 0
        ? h("p", { class: "muted" }, none)
        : h(
            "table",
            { class: "waiters" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["Event id", "Run", "Step", "Waiting since", "Times out"].map((name) => h("th", {}, name)),
              ),
            ),
            h(
              "tbody",
              {},
              answer.waiters.map((waiter) =>
                h(
                  "tr",
                  { dataset: { eventId: waiter.event_id, runId: waiter.run_id } },
                  h("td", { class: "mono" }, waiter.event_id),
                  h("td", {}, runLink(waiter.run_id)),
                  h("td", {}, waiter.step_index),
                  h("td", {}, time(waiter.since_ms)),
                  h("td", {}, time(waiter.timeout_at_ms)),
                ),
              ),
            ),
          ),
    );
  };
  return drawn(result, draw);
}

export async function flowView() {
  const body = h("div");
  show(
    h("h1", {}, "Flow-control keys"),
    h(
      "p",
      { class: "muted" },
      "Work queued under each key's limits, in flight, and started in the current rate window, as the scheduler last published them.",
    ),
    body,
  );
  const limits = (key) =>
    [
      key.rate !== null ? `${key.rate} per ${duration(key.period_ms)}` : null,
      key.parallelism !== null ? `${key.parallelism} at a time` : null,
    ]
      .filter(Boolean)
      .join(", ") || "none";
  const draw = async () => {
    const answer = await api("/v1/flow-control?limit=200");
    fill(
      body,
      answer.flow_keys.length === 0
        ? h("p", { class: "muted" }, "No work has been scheduled under a flow-control key yet.")
        : h(
            "table",
            { class: "flow" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["Key", "Queued", "In flight", "Starts in the window", "Limits", "Updated"].map((name) =>
                  h("th", {}, name),
                ),
              ),
            ),
            h(
              "tbody",
              {},
              answer.flow_keys.map((key) =>
                h(
                  "tr",
                  { dataset: { key: key.key } },
                  h("td", { class: "mono" }, key.key),
                  h("td", { dataset: { field: "queued" } }, key.queued),
                  h("td", {}, key.in_flight),
                  h("td", {}, key.starts_in_window),
                  h("td", {}, limits(key)),
                  h("td", {}, time(key.updated_at_ms)),
                ),
              ),
            ),
          ),
    );
  };
  return drawn(body, draw);
}
