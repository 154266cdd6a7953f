// drainpool console: the job page, one job's record from GET /api/jobs/ID.
// Reached by the "Find a job" box or a job id link (running, recent outcomes,
// dead letters), all of which set the address to #job/ID, so the page can be
// bookmarked and the browser's Back returns to the overview. Text nodes only,
// as in console.js: a payload or an error is shown as its characters.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const STATE_PILL = { completed: "ok", running: "ok", waiting: "", delayed: "warn", cancelled: "warn", dead: "bad" };

  function shownId() {
    const match = /^#job\/(.+)$/.exec(location.hash);
    return match ? decodeURIComponent(match[1]) : null;
  }

  // A bar from enqueued to finished (or now), split where the job first started.
  function timeline(job) {
    const { el, clock, duration } = window.drainpool;
    const end = job.finished_at || Date.now() / 1000;
    const span = Math.max(end - job.enqueued_at, 1e-6);
    const startX = job.started_at ? ((job.started_at - job.enqueued_at) / span) * 100 : 100;
    const bar = document.createElementNS(SVG, "svg");
    bar.setAttribute("viewBox", "0 0 100 6");
    bar.setAttribute("preserveAspectRatio", "none");
    bar.setAttribute("class", "timeline-bar");
    const part = (x, w, cls) => {
      const r = document.createElementNS(SVG, "rect");
      for (const [k, v] of Object.entries({ x, y: 0, width: Math.max(w, 0), height: 6, class: cls })) r.setAttribute(k, String(v));
      bar.append(r);
    };
    part(0, startX, "waited");
    if (job.started_at) part(startX, 100 - startX, job.finished_at ? "ran" : "running");
    const steps = [
      ["enqueued", job.enqueued_at, ""],
      ["first started", job.started_at, job.started_at ? "waited " + duration(job.started_at - job.enqueued_at) : "not started yet"],
      [
        job.finished_at ? job.state : "now",
        job.finished_at,
        job.started_at && job.finished_at ? "after " + duration(job.finished_at - job.started_at) + " from the first start" : "",
      ],
    ];
    return el(
      "div",
      { class: "timeline" },
      bar,
      el(
        "ol",
        { class: "timeline-steps" },
        ...steps.map(([name, at, note]) => el("li", { data: { step: name } }, el("b", {}, name), " ", at ? clock(at) : "–", note ? el("span", { class: "muted" }, " · " + note) : null)),
      ),
    );
  }

  function render(job) {
    const { el, clock, payloadText } = window.drainpool;
    const worker = job.worker ? `${job.worker.host} pid ${job.worker.pid}` + (job.worker.pool ? ` pool ${job.worker.pool}` : "") : "–";
    const facts = [
      ["State", el("span", { class: "pill " + (STATE_PILL[job.state] || ""), id: "job-state" }, job.state)],
      ["Task", job.task],
      ["Attempts", job.attempts],
      ["Enqueued", clock(job.enqueued_at)],
      ["First started", clock(job.started_at)],
      ["Finished", clock(job.finished_at)],
      ["Daemon", worker],
      ["Key", job.key === null ? "–" : job.key],
      ["Time limit", job.timeout ? job.timeout + " s" : "–"],
    ];
    if (job.cancel_requested_at) {
      const by = job.cancelled_by ? " by " + job.cancelled_by : "";
      const why = job.cancel_reason ? ": " + job.cancel_reason : "";
      facts.push(["Cancel asked", clock(job.cancel_requested_at) + by + why]);
    }
    const { cancelJob, actionsOn } = window.drainpool;
    const cancellable = ["waiting", "delayed", "running"].includes(job.state) && !job.cancel_requested_at;
    let cancel = null;
    if (cancellable && actionsOn()) {
      cancel = el("button", { type: "button", class: "small cancel-job", id: "job-cancel" }, "Cancel this job");
      cancel.addEventListener("click", () => cancelJob(job.id));
    }
    const parts = [
      cancel,
      el("dl", { class: "facts", id: "job-facts" }, ...facts.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)])),
      el("h3", {}, "Timeline"),
      timeline(job),
      el("h3", {}, "Payload"),
      el("pre", { class: "payload" }, payloadText(job.payload)),
    ];
    if (job.payload_error) parts.push(el("p", { class: "muted" }, job.payload_error));
    if (job.result_kept) parts.push(el("h3", {}, "Result"), el("pre", { class: "result" }, payloadText(job.result)));
    else if (job.result_note || job.state === "completed") {
      parts.push(el("h3", {}, "Result"), el("p", { class: "muted result-note" }, job.result_note || "(no result kept)"));
    }
    if (job.error) {
      parts.push(el("h3", {}, job.state === "dead" ? "Error" : "Last error"), el("pre", { class: "error-text" }, job.error));
      parts.push(el("h3", {}, "Traceback"), el("pre", { class: "traceback" }, job.traceback || "(none)"));
    }
    return parts.filter((part) => part !== null);
  }

  async function show() {
    const id = shownId();
    document.getElementById("job-page").hidden = id === null;
    document.getElementById("overview").hidden = id !== null;
    if (id === null) return;
    document.getElementById("job-title").textContent = "Job " + id;
    const body = document.getElementById("job-body");
    try {
      const job = await window.drainpool.getJSON("/api/jobs/" + encodeURIComponent(id));
      if (shownId() !== id) return; // the user moved on while it loaded
      body.replaceChildren(...render(job));
      body.dataset.jobId = job.id;
    } catch (error) {
      body.replaceChildren(window.drainpool.el("p", { class: "job-missing" }, error.message));
      body.dataset.jobId = "";
    }
  }

  function wire() {
    const form = document.getElementById("find-job");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const id = document.getElementById("find-id").value.trim();
      if (id) location.hash = "#job/" + encodeURIComponent(id);
    });
    window.addEventListener("hashchange", show);
    show();
  }

  // A link to a job's page, for the tables of console.js.
  window.drainpool.jobLink = (id) => window.drainpool.el("a", { href: "#job/" + encodeURIComponent(id), class: "job-link" }, id);
  window.drainpool.refreshJob = () => (shownId() === null ? Promise.resolve() : show());
  document.addEventListener("DOMContentLoaded", wire);
})();
