// A run: its facts and actions, its timeline, and its history, followed live through the history stream.

import {
  ENDED,
  REFRESH_MS,
  h,
  api,
  post,
  time,
  status,
  runLink,
  json,
  duration,
  show,
  failure,
  every,
  confirmed,
} from "./dom.js";

function summary(event) {
  const parts = [];
  for (const name of [
    "name",
    "step_index",
    "attempt",
    "event_id",
    "workflow",
    "child_run_id",
    "status",
    "action",
    "actor",
    "reason",
  ]) {
    if (event[name] !== undefined && event[name] !== null)
      parts.push(`${name}=${typeof event[name] === "object" ? JSON.stringify(event[name]) : event[name]}`);
  }
  if (event.error) parts.push(`error=${event.error.type}: ${event.error.message}`);
  // A failure no retry mends (a 4xx answer) is final whatever the retries left: say so, not "no retry left".
  if (event.retryable === false) parts.push("not retried: a failure no retry mends");
  else if (event.retry_at_ms) parts.push(`retry at ${time(event.retry_at_ms)}`);
  return parts.join(" ").replace(/\s+/g, " ").slice(0, 300); // one line, however long the message
}

function timeline(run, steps, events) {
  const failures = events.filter((event) => event.type === "StepFailed" || event.type === "CallRetried");
  const end = ENDED.has(run.status) ? run.updated_at_ms : Date.now();
  const start = run.created_at_ms;
  const span = Math.max(1, end - start);
  const at = (ms) => `${Math.min(100, Math.max(0, ((ms - start) / span) * 100))}%`;
  const rows = steps.map((step) => {
    const from = step.started_at_ms ?? end;
    const to = step.completed_at_ms ?? end;
    const width = `${Math.max(0, ((to - from) / span) * 100)}%`;
    const marks = failures
      .filter((event) => event.step_index === step.index)
      .map((event) =>
        h("span", { class: "mark", style: `left:${at(event.at_ms)}`, title: `${event.type} at ${time(event.at_ms)}` }),
      );
    const title = `${step.kind} ${step.name}: ${step.status}${step.completed_at_ms ? `, ${duration(step.completed_at_ms - from)}` : ""}`;
    return h(
      "div",
      { class: "row", dataset: { step: step.index, kind: step.kind, status: step.status } },
      h("div", { class: "label", title }, `${step.index}. ${step.name} `, h("span", { class: "muted" }, step.kind)),
      h(
        "div",
        { class: "track" },
        h("span", { class: `bar kind-${step.kind} ${step.status}`, style: `left:${at(from)};width:${width}`, title }),
        marks,
      ),
    );
  });
  return h(
    "div",
    { class: "timeline panel", "aria-label": "timeline" },
    h(
      "div",
      { class: "axis" },
      h("span", {}, time(start)),
      h("span", {}, `${duration(span)}${ENDED.has(run.status) ? "" : " so far"}`),
    ),
    rows.length ? rows : h("p", { class: "muted" }, "No steps yet."),
  );
}

function history(events) {
  return h(
    "div",
    { class: "history panel", "aria-label": "history" },
    events.map((event) =>
      h(
        "details",
        { dataset: { seq: event.seq, type: event.type } },
        h(
          "summary",
          {},
          h("span", { class: "muted" }, event.seq),
          h("span", { class: "muted" }, new Date(event.at_ms).toLocaleTimeString()),
          h("span", { class: "type" }, event.type),
          h("span", { class: "mono" }, summary(event)),
        ),
        json(event),
      ),
    ),
  );
}

function actions(run, steps, redraw) {
  const act = async (question, work) => {
    if (!confirmed(question)) return;
    try {
      await work();
      await redraw();
    } catch (error) {
      alert(error.message);
    }
  };
  const id = encodeURIComponent(run.run_id);
  const buttons = [];
  if (!ENDED.has(run.status)) {
    buttons.push(
      h(
        "button",
        {
          class: "danger",
          dataset: { action: "cancel" },
          onclick: () =>
            act(`Cancel run ${run.run_id}?`, () =>
              post(`/v1/runs/${id}/cancel`, { reason: "cancelled from the dashboard" }),
            ),
        },
        "Cancel",
      ),
    );
  }
  if (run.dead_letter) {
    for (const [action, text] of [
      ["resume", "Resume"],
      ["restart", "Restart"],
    ]) {
      buttons.push(
        h(
          "button",
          {
            dataset: { action },
            onclick: () =>
              act(`${text} run ${run.run_id}?`, () =>
                post(`/v1/deadletter/${id}/${action}`, { reason: "from the dashboard" }),
              ),
          },
          text,
        ),
      );
    }
    buttons.push(
      h(
        "button",
        {
          class: "danger",
          dataset: { action: "delete" },
          onclick: () =>
            act(`Delete run ${run.run_id} from the dead-letter list?`, () =>
              api(`/v1/deadletter/${id}`, { method: "DELETE" }),
            ),
        },
        "Delete from the list",
      ),
    );
  }
  for (const step of steps) {
    if (step.kind === "wait_for_event" && step.status === "pending" && step.detail?.event_id) {
      const eventId = step.detail.event_id;
      buttons.push(
        h(
          "button",
          {
            dataset: { action: "notify", eventId },
            onclick: () => {
              const text = window.prompt(`Notify ${eventId} with this data (JSON):`, "null");
              if (text === null) return;
              let data;
              try {
                data = JSON.parse(text);
              } catch (error) {
                alert(`Expected JSON, but ${error.message}`);
                return;
              }
              act(`Notify ${eventId}?`, () => post(`/v1/events/${encodeURIComponent(eventId)}/notify`, { data }));
            },
          },
          `Notify ${eventId}`,
        ),
      );
    }
  }
  return buttons.length ? h("div", { class: "actions" }, buttons) : null;
}

export async function runView(runId) {
  show(h("h1", {}, "Run ", h("span", { class: "mono" }, runId)), h("p", { class: "muted" }, "Loading…"));
  const id = encodeURIComponent(runId);
  let events = [];
  let stream = null;
  let streaming = true; // until the stream says the run has ended
  let drawing = null;
  const take = (event) => {
    if (events.some((known) => known.seq === event.seq)) return false;
    events = [...events, event].sort((a, b) => a.seq - b.seq);
    return true;
  };
  const draw = async () => {
    const [run, children] = await Promise.all([api(`/v1/runs/${id}`), api(`/v1/runs?parent_run_id=${id}&limit=100`)]);
    if (!streaming && run.last_seq > (events.at(-1)?.seq ?? 0)) {
      // The stream ended with the run; a run resumed or restarted since goes on: read what came after.
      const more = await api(`/v1/runs/${id}/history?after_seq=${events.at(-1)?.seq ?? 0}`);
      more.events.forEach(take);
    }
    const facts = h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Status"),
      h("dd", {}, status(run.status), run.dead_letter ? " in the dead-letter list" : ""),
      h("dt", {}, "Workflow"),
      h("dd", {}, run.workflow),
      h("dt", {}, "Label"),
      h("dd", {}, run.label ?? ""),
      h("dt", {}, "Created"),
      h("dd", {}, time(run.created_at_ms)),
      h("dt", {}, "Updated"),
      h(
        "dd",
        {},
        time(run.updated_at_ms),
        ENDED.has(run.status) ? ` (took ${duration(run.updated_at_ms - run.created_at_ms)})` : "",
      ),
      run.parent_run_id ? [h("dt", {}, "Parent"), h("dd", {}, runLink(run.parent_run_id))] : null,
      children.runs.length
        ? [
            h("dt", {}, "Children"),
            h(
              "dd",
              {},
              children.runs.map((child) => [runLink(child.run_id), " "]),
            ),
          ]
        : null,
    );
    show(
      h("h1", {}, "Run ", h("span", { class: "mono" }, run.run_id)),
      h("div", { class: "panel" }, facts, actions(run, run.steps, draw)),
      h("h2", {}, "Timeline"),
      timeline(run, run.steps, events),
      h(
        "div",
        { class: "panel" },
        h("h2", {}, "Payload"),
        json(run.payload),
        run.output !== null ? [h("h2", {}, "Output"), json(run.output)] : null,
        run.error ? [h("h2", {}, "Error"), json(run.error)] : null,
      ),
      h("h2", {}, "History"),
      history(events),
    );
  };
  const redraw = () => {
    // At most one drawing at a time; events arriving meanwhile are in the next one.
    drawing = (drawing || Promise.resolve()).then(draw).catch((error) => show(failure(error)));
  };
  // Live: the history streams in (server-sent events) and every event redraws the page; a run that
  // has ended sends "end" and the stream closes. A slow refresh also covers what streams miss.
  stream = new EventSource(`/v1/runs/${id}/history/stream`);
  stream.onmessage = (message) => {
    if (take(JSON.parse(message.data))) redraw();
  };
  stream.addEventListener("end", () => {
    stream.close();
    streaming = false;
    redraw();
  });
  redraw();
  const stopRefresh = every(REFRESH_MS * 2, async () => redraw());
  return () => {
    stopRefresh();
    stream?.close();
  };
}
