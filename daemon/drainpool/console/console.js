// drainpool console: reads the JSON API every few seconds and renders it.
// Every value from the daemon (task names, payloads, errors, tracebacks) goes
// into the page through text nodes only, never through innerHTML: a payload
// such as <img src=x onerror=...> must show as those characters. The server's
// content security policy backs this up by refusing any inline script.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const TOKEN_KEY = "drainpool.console.token";
  const $ = (id) => document.getElementById(id);

  let paused = false;
  let inFlight = false;
  let info = { actions: false, reading_needs_token: false };
  const openDetails = new Set(); // dead jobs whose details the user opened
  const lastRendered = {}; // section -> JSON last drawn, to keep the DOM still when nothing changed

  // -- small DOM helpers (text only) --------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") node.className = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else if (key === "title") node.title = value;
      else if (key === "colSpan") node.colSpan = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function changed(section, data) {
    const text = JSON.stringify(data);
    if (lastRendered[section] === text) return false;
    lastRendered[section] = text;
    return true;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 10) return seconds.toFixed(2) + " s";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const s = Math.floor(seconds);
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function clock(epochSeconds) {
    if (!epochSeconds) return "–";
    const when = new Date(epochSeconds * 1000);
    const today = new Date().toDateString() === when.toDateString();
    return today ? when.toLocaleTimeString() : when.toLocaleString();
  }

  function payloadText(payload) {
    if (typeof payload === "string") return payload;
    return JSON.stringify(payload, null, 2);
  }

  // -- talking to the daemon ------------------------------------------------------

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: headers(), cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.error || response.status + " " + response.statusText);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  async function act(path, body, describe) {
    const result = $("action-result");
    result.className = "action-result";
    result.textContent = "working…";
    try {
      const response = await fetch(path, {
        method: "POST",
        headers: headers({ "Content-Type": "application/json", "X-Drainpool-CSRF": "1" }),
        body: JSON.stringify(body),
        cache: "no-store",
      });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(data.error || String(response.status));
      result.classList.add("ok");
      result.textContent = describe(data);
    } catch (error) {
      result.classList.add("bad");
      result.textContent = "Refused: " + error.message;
    }
    refresh();
  }

  // Shared with chart.js and jobpage.js, which load after this file and add to it.
  // cancelJob: the running list's and the job page's button (POST /api/jobs/ID/cancel).
  const cancelJob = (id) =>
    act("/api/jobs/" + encodeURIComponent(id) + "/cancel", { reason: "from the console" }, (r) =>
      r.effect === "cancelled" ? "Cancelled job " + id : "Asked job " + id + " to stop",
    );
  const actionsOn = () => info.actions;
  window.drainpool = { el, getJSON, clock, duration, payloadText, cancelJob, actionsOn };

  // -- rendering ------------------------------------------------------------------

  function renderStatus(status) {
    const state = $("state");
    state.textContent = status.state + (status.ready ? "" : " (not ready)");
    state.className = "badge state-" + status.state + (status.ready ? "" : " not-ready");
    const up = Date.now() / 1000 - status.started_at;
    $("meta").replaceChildren(
      el("span", {}, "pid ", el("b", {}, status.pid)),
      el("span", {}, "up ", el("b", {}, duration(up))),
      el("span", { class: "path", title: status.config }, status.config),
    );
    if (changed("pools", status.pools)) {
      $("pools").replaceChildren(
        ...status.pools.map((pool) =>
          el(
            "tr",
            {},
            el("td", {}, pool.name),
            el("td", { class: "num" }, pool.generation),
            el("td", { class: "num" }, pool.workers),
            el("td", { class: "num" }, pool.running.length),
            el("td", { class: "num" }, pool.handed),
            el("td", {}, el("span", { class: pool.draining ? "pill warn" : "pill ok" }, pool.draining ? "draining" : "running")),
          ),
        ),
      );
    }
    const running = status.pools.flatMap((pool) =>
      pool.running.map((task) => Object.assign({ pool: pool.name, generation: pool.generation }, task)),
    );
    running.sort((a, b) => b.seconds - a.seconds);
    $("running-count").textContent = running.length;
    $("running-empty").hidden = running.length > 0;
    $("running").replaceChildren(
      ...running.map((task) =>
        el(
          "tr",
          { data: { jobId: task.job_id } },
          el("td", { class: "mono" }, window.drainpool.jobLink(task.job_id)),
          el("td", { class: "wrap" }, task.task),
          el("td", { class: "num" }, task.attempt),
          el("td", { class: "num" }, duration(task.seconds)),
          el("td", {}, task.pool + " g" + task.generation),
          el(
            "td",
            { class: "mono muted" },
            task.thread,
            task.abandoned ? el("span", { class: "pill bad" }, "abandoned") : null,
            // Asked to stop (drain, cancel, timeout) and since when: the job's own signal.
            task.stop_reason ? el("span", { class: "pill warn stop-reason" }, task.stop_reason + " " + duration(task.stopping_seconds) + " ago") : null,
          ),
          el("td", { class: "row-actions" }, cancelButton(task)),
        ),
      ),
    );
    renderReload(status.reload);
  }

  function cancelButton(task) {
    if (!info.actions || task.abandoned || task.stop_reason === "cancel") return null;
    const button = el("button", { type: "button", class: "small cancel-job" }, "Cancel");
    button.addEventListener("click", () => cancelJob(task.job_id));
    return button;
  }

  function renderReload(record) {
    if (!changed("reload", record)) return;
    const facts = $("last-reload");
    if (!record.seq) {
      facts.replaceChildren(el("dt", {}, "Result"), el("dd", { class: "muted" }, "no reload since start"));
      return;
    }
    const pill = { applied: "ok", unchanged: "ok", rejected: "bad" }[record.result] || "";
    const items = [
      el("dt", {}, "Result"),
      el("dd", {}, el("span", { class: "pill " + pill, id: "reload-result" }, record.result)),
      el("dt", {}, "Asked by"),
      el("dd", {}, record.source.replace("_", " ")),
      el("dt", {}, "At"),
      el("dd", {}, clock(record.at)),
    ];
    if (record.message) {
      items.push(el("dt", {}, "Message"), el("dd", {}, el("pre", { class: "message", id: "reload-message" }, record.message)));
    }
    facts.replaceChildren(...items);
  }

  function renderQueue(stats) {
    for (const node of document.querySelectorAll("#queue [data-key]")) {
      node.textContent = stats[node.dataset.key];
    }
    document.querySelector('#queue [data-key="dead"]').classList.toggle("bad", stats.dead > 0);
    $("oldest").textContent = stats.oldest_ready_age_seconds === null ? "none ready" : duration(stats.oldest_ready_age_seconds);
  }

  function renderOutcomes(data) {
    if (!changed("outcomes", data.outcomes)) return;
    const rows = data.outcomes.slice(0, 30);
    $("outcomes-empty").hidden = rows.length > 0;
    $("outcomes").replaceChildren(
      ...rows.map((o) =>
        el(
          "tr",
          { data: { jobId: o.job_id, outcome: o.outcome } },
          el("td", {}, clock(o.at)),
          el("td", { class: "mono" }, window.drainpool.jobLink(o.job_id)),
          el("td", { class: "wrap" }, o.task),
          el("td", { class: "num" }, o.attempt),
          el("td", {}, el("span", { class: "pill outcome-" + o.outcome }, o.outcome)),
          el("td", { class: "num" }, duration(o.seconds)),
        ),
      ),
    );
  }

  function renderSchedules(rows) {
    if (!changed("schedules", rows)) return;
    $("schedules-empty").hidden = rows.length > 0;
    $("schedules").replaceChildren(
      ...rows.map((s) =>
        el(
          "tr",
          { data: { schedule: s.name } },
          el("td", { class: "wrap" }, s.name),
          el("td", { class: "wrap" }, s.task),
          el("td", { class: "mono" }, s.expression),
          el("td", {}, s.timezone),
          el("td", {}, s.last_tick === null ? "never" : clock(s.last_tick)),
          el("td", {}, s.next_due === null ? "-" : clock(s.next_due)),
          el("td", {}, s.enabled ? "yes" : "no"),
        ),
      ),
    );
  }

  function renderDead(data) {
    $("dead-count").textContent = data.dead.length + (data.dead.length >= data.limit ? "+" : "");
    const deadChanged = changed("dead", data.dead);
    const actionsChanged = changed("dead-actions", info.actions);
    if (!deadChanged && !actionsChanged) return;
    $("dead-empty").hidden = data.dead.length > 0;
    const rows = [];
    for (const job of data.dead) {
      const [firstLine] = (job.error || "(no error text)").split("\n");
      const details = el(
        "details",
        { data: { jobId: job.id } },
        el("summary", { class: "error" }, firstLine),
        el("h3", {}, "Error"),
        el("pre", { class: "error-text" }, job.error),
        el("h3", {}, "Payload"),
        el("pre", { class: "payload" }, payloadText(job.payload)),
        el("h3", {}, "Traceback"),
        el("pre", { class: "traceback" }, job.traceback || "(none)"),
      );
      details.open = openDetails.has(job.id);
      details.addEventListener("toggle", () => {
        if (details.open) openDetails.add(job.id);
        else openDetails.delete(job.id);
      });
      const cells = [
        el("td", { class: "mono" }, window.drainpool.jobLink(job.id)),
        el("td", { class: "wrap" }, job.task),
        el("td", { class: "num" }, job.attempts),
        el("td", {}, clock(job.failed_at)),
        el("td", { class: "wrap error-cell" }, details),
      ];
      if (info.actions) {
        const retry = el("button", { type: "button", class: "small retry" }, "Retry");
        retry.addEventListener("click", () =>
          act("/api/dead/retry", { ids: [job.id] }, (r) => "Retried " + r.retried + " dead job (" + job.id + ")"),
        );
        const purge = el("button", { type: "button", class: "small danger purge" }, "Purge");
        purge.addEventListener("click", () => {
          if (confirm("Delete dead job " + job.id + " for good?")) {
            act("/api/dead/purge", { ids: [job.id] }, (r) => "Purged " + r.purged + " dead job (" + job.id + ")");
          }
        });
        cells.push(el("td", { class: "row-actions" }, el("div", { class: "row-buttons" }, retry, purge)));
      }
      rows.push(el("tr", { data: { jobId: job.id } }, ...cells));
    }
    $("dead").replaceChildren(...rows);
  }

  function renderInfo() {
    // The token field serves actions, and reading when the endpoint is not on loopback.
    $("actions").hidden = !(info.actions || info.reading_needs_token);
    $("actions-off").hidden = info.actions;
    for (const node of document.querySelectorAll(".action-only")) node.hidden = !info.actions;
  }

  function showProblem(text) {
    const banner = $("banner");
    banner.hidden = !text;
    banner.textContent = text || "";
  }

  // -- the refresh loop -----------------------------------------------------------

  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    try {
      info = await getJSON("/api/console");
      renderInfo();
      const [status, queue, outcomes, dead, minutes] = await Promise.all([
        getJSON("/api/status"),
        getJSON("/api/queue"),
        getJSON("/api/outcomes?limit=30"),
        getJSON("/api/dead?limit=100"),
        getJSON("/api/outcomes/minutes"),
        window.drainpool.refreshJob(),
      ]);
      renderStatus(status);
      renderQueue(queue);
      renderOutcomes(outcomes);
      renderDead(dead);
      if (changed("chart", minutes)) window.drainpool.renderChart(minutes);
      renderSchedules(await getJSON("/api/schedules"));
      showProblem("");
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.loaded = "1";
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        showProblem("Not allowed to read: " + error.message + ". Enter the console token above.");
      } else {
        showProblem("Cannot reach the daemon: " + error.message);
      }
    } finally {
      inFlight = false;
    }
  }

  function wire() {
    $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
      $("action-result").textContent = value ? "Token saved for this tab." : "Token cleared.";
      refresh();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("token").value = "";
      $("action-result").textContent = "Token cleared.";
    });
    $("reload").addEventListener("click", () =>
      act("/api/reload", {}, () => "Reload requested: see Last reload for the result"),
    );
    $("retry-all").addEventListener("click", () => {
      if (confirm("Move every dead job back to the queue?")) {
        act("/api/dead/retry", { all: true }, (r) => "Retried " + r.retried + " dead jobs");
      }
    });
    $("purge-all").addEventListener("click", () => {
      if (confirm("Delete every dead job for good?")) {
        act("/api/dead/purge", { all: true }, (r) => "Purged " + r.purged + " dead jobs");
      }
    });
    $("pause").addEventListener("click", () => {
      paused = !paused;
      $("pause").textContent = paused ? "Resume" : "Pause";
    });
    refresh();
    setInterval(() => {
      if (!paused && !document.hidden) refresh();
    }, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", wire);
})();
