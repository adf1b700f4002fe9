// pgqueue dashboard: send actions as JSON (the API takes nothing else), and show their outcome.
(function () {
  "use strict";
  htmx.defineExtension("json-enc", {
    onEvent: function (name, evt) {
      if (name === "htmx:configRequest" && evt.detail.verb !== "get") {
        evt.detail.headers["Content-Type"] = "application/json";
      }
    },
    encodeParameters: function (xhr, parameters) {
      xhr.overrideMimeType("text/json");
      var body = {};
      parameters.forEach(function (value, key) {
        if (key === "ids") {
          (body.ids = body.ids || []).push(value);
        } else {
          body[key] = value;
        }
      });
      return JSON.stringify(body);
    },
  });

  // Live parts refresh only while the user is not in the middle of something inside them: typing
  // in a field, a field typed in but not sent yet (a queue's limits), or jobs ticked for a bulk action.
  // An action in flight also holds the refresh: its button lives in the live part, and a button
  // swapped out of the page takes the action's answer with it (no toast, no redirect after a delete).
  var inFlight = 0;
  function isAction(detail) {
    return Boolean(detail && detail.requestConfig && detail.requestConfig.verb !== "get");
  }

  window.pgqueueLive = function () {
    if (inFlight > 0) return false;
    var active = document.activeElement;
    if (active && active.closest && active.closest("#live") && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) {
      return false;
    }
    var typed = Array.prototype.some.call(document.querySelectorAll("#live input:not([type=checkbox])"),
      function (field) { return field.value !== field.defaultValue; });
    return !typed && !document.querySelector("#live input[name=ids]:checked");
  };

  var timer = null;
  function toast(text, bad) {
    var box = document.getElementById("toast");
    if (!box) return;
    box.textContent = text;
    box.className = bad ? "show bad" : "show";
    clearTimeout(timer);
    timer = setTimeout(function () { box.className = ""; }, bad ? 8000 : 3500);
  }

  function describe(data) {
    if (data.results) {
      // Say why the first refused job was refused (wrong state, not found), not only how many were.
      var refused = data.results.filter(function (r) { return !r.ok; });
      return data.action + ": " + data.done + " done" +
        (refused.length ? ", " + refused.length + " refused (" + refused[0].error + (refused.length > 1 ? ", …" : "") + ")" : "");
    }
    // Retry all failed: name the dead jobs it had to leave (a live job holds their unique key).
    if (data.retried) return "retried " + data.count + " job" + (data.count === 1 ? "" : "s") +
      (data.skipped_count ? ", " + data.skipped_count + " left failed: a live job holds their unique key (" +
        data.skipped.slice(0, 5).join(", ") + (data.skipped_count > 5 ? ", …" : "") + ")" : "");
    if (data.purged !== undefined) return "purged " + data.purged + " job" + (data.purged === 1 ? "" : "s");
    if (data.previous_state) return "job " + data.id + ": " + data.previous_state + " → " + (data.state || "deleted");
    if (data.name) return "queue " + data.name + (data.paused ? " paused" : " running") +
      (data.concurrency ? ", concurrency " + data.concurrency : "") + (data.rate ? ", rate " + data.rate : "");
    return "done";
  }

  // Deleting the job this page shows: the response's HX-Trigger would refresh the page's live part
  // (a 404 now) before the redirect to the jobs list below; once it succeeded, refresh nothing more.
  var leaving = false;
  document.addEventListener("htmx:beforeOnLoad", function (evt) {
    var config = evt.detail.requestConfig || {};
    if (config.verb === "delete" && evt.detail.xhr.status < 400 && /\/jobs\/\d+$/.test(window.location.pathname)) {
      leaving = true;
    }
  });
  document.addEventListener("htmx:beforeRequest", function (evt) {
    if (leaving && evt.detail.elt && evt.detail.elt.id === "live") evt.preventDefault();
    else if (isAction(evt.detail)) inFlight += 1;
  });

  document.addEventListener("htmx:afterRequest", function (evt) {
    if (isAction(evt.detail)) inFlight = Math.max(0, inFlight - 1);
    var path = evt.detail.pathInfo && evt.detail.pathInfo.requestPath || "";
    if (path.indexOf("/api/") === -1) {
      // A live refresh refused for want of a login (logged out elsewhere, tokens changed): reload,
      // so the page shows the login form instead of data that silently stopped changing.
      if (evt.detail.xhr && evt.detail.xhr.status === 401) window.location.reload();
      return;
    }
    var data = {};
    try { data = JSON.parse(evt.detail.xhr.responseText || "{}"); } catch (e) { data = {}; }
    if (evt.detail.successful) {
      toast(describe(data), Boolean(data.refused || data.skipped_count));
      if (data.state === null && data.previous_state && /\/jobs\/\d+$/.test(window.location.pathname)) {
        window.location.href = window.location.pathname.replace(/\/\d+$/, "");
      }
    } else {
      toast(data.error || ("request failed (" + evt.detail.xhr.status + ")"), true);
    }
  });
  // A failed request is handled above; keep htmx from swapping error bodies into the page.
  // A refresh already on its way when an action was sent is not swapped in either (the next one is).
  document.addEventListener("htmx:beforeSwap", function (evt) {
    if (evt.detail.xhr.status >= 400) evt.detail.shouldSwap = false;
    if (inFlight > 0 && evt.detail.target && evt.detail.target.id === "live") evt.detail.shouldSwap = false;
  });
})();
