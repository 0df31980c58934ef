// CauseFlow console: small progressive enhancements. Every page works without this script.
(function () {
  "use strict";

  // Times are rendered in UTC on the server; show them in the viewer's time zone.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.textContent = d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
        t.title = t.getAttribute("datetime");
      }
    });
  }

  // Copy buttons: data-copy names the element whose text is copied.
  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (b) {
      b.hidden = false;
      b.addEventListener("click", function () {
        var el = document.getElementById(b.getAttribute("data-copy"));
        if (!el || !navigator.clipboard) return;
        navigator.clipboard.writeText(el.textContent.trim()).then(function () {
          var label = b.textContent;
          b.textContent = "Copied";
          setTimeout(function () { b.textContent = label; }, 1500);
        });
      });
    });
  }

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  }

  // A page that showed a secret must not show it again on reload: replace the POST in history
  // with a plain GET of the same page.
  function forgetPost() {
    if (document.body.hasAttribute("data-forget-post")) {
      history.replaceState(null, "", location.pathname);
    }
  }

  // Live incidents: server-sent events where the page offers a stream, polling otherwise. Either
  // way the rows are re-fetched as HTML from the same page.
  function live() {
    var region = document.querySelector("[data-live]");
    if (!region) return;
    var indicator = document.getElementById("live");
    var rows = document.getElementById("incident-rows");
    var fragment = region.getAttribute("data-fragment");
    var busy = false;
    function state(s, text) {
      indicator.setAttribute("data-state", s);
      indicator.textContent = text;
    }
    function refresh() {
      if (busy) return;
      busy = true;
      fetch(fragment, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) {
          if (r.status === 401) { location.reload(); throw new Error("signed out"); }
          if (!r.ok) throw new Error(r.status);
          return r.text();
        })
        .then(function (html) {
          if (html !== rows.getAttribute("data-html")) {
            var tpl = document.createElement("template");
            tpl.innerHTML = html;
            localTimes(tpl.content);
            rows.replaceChildren(tpl.content);
            rows.setAttribute("data-html", html);
          }
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }
    var stream = region.getAttribute("data-stream");
    if (stream && window.EventSource) {
      var es = new EventSource(stream);
      // Anything that changed while the stream was down is fetched as it (re)opens.
      es.addEventListener("open", function () { state("live", "Live"); refresh(); });
      es.addEventListener("changed", refresh);
      es.addEventListener("error", function () {
        if (es.readyState === EventSource.CLOSED) {
          // Refused (too many live pages, or signed out): poll instead.
          poll();
        } else {
          state("retrying", "Reconnecting…");
        }
      });
    } else {
      poll();
    }
    function poll() {
      state("live", "Live (checking every second)");
      setInterval(function () { if (!document.hidden) refresh(); }, 1000);
    }
  }

  // Send test alert through the JSON management API, and link to the incident it made.
  function testAlert() {
    document.querySelectorAll("form[data-test-alert]").forEach(function (f) {
      f.addEventListener("submit", function (e) {
        e.preventDefault();
        var out = document.getElementById("test-result");
        var button = f.querySelector("button");
        button.disabled = true;
        fetch(f.getAttribute("data-test-alert"), {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
          body: JSON.stringify({ provider: f.getAttribute("data-provider") })
        })
          .then(function (r) { return r.json().then(function (j) { return [r, j]; }); })
          .then(function (rj) {
            out.hidden = false;
            out.replaceChildren();
            if (!rj[0].ok) { out.textContent = rj[1].detail || "The test alert was not accepted."; return; }
            out.append("Test alert accepted. ");
            var a = document.createElement("a");
            a.href = rj[1].consoleUrl;
            a.textContent = "Open incident " + rj[1].incidentId;
            out.append(a);
          })
          .catch(function () { out.hidden = false; out.textContent = "The test alert could not be sent; try again."; })
          .then(function () { button.disabled = false; });
      });
    });
  }

  forgetPost();
  localTimes(document);
  copyButtons();
  live();
  testAlert();
})();
