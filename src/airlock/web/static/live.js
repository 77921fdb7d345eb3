// Live updates without a framework: /events says "change" when the state store changes, and
// each element of the page marked data-live (with an id) is replaced by the same element of a
// fresh copy of the page. Forms sit outside those elements, so nothing being typed is lost.
(function () {
  "use strict";
  if (!window.EventSource || !window.fetch || !window.DOMParser) return;
  var body = document.body;
  var stamp = document.getElementById("live-stamp");
  var busy = false, again = false;

  function say(state, text) {
    body.setAttribute("data-live-state", state);
    if (stamp) stamp.textContent = text;
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (text) {
        if (text === null) return;
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (part) {
          var replacement = fresh.getElementById(part.id);
          if (replacement) part.replaceWith(document.importNode(replacement, true));
        });
        say("connected", "updated " + new Date().toLocaleTimeString());
      })
      .catch(function () { say("reconnecting", "offline"); })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  var source = new EventSource("/events");
  source.addEventListener("open", function () { say("connected", "live"); });
  source.addEventListener("change", refresh);
  source.addEventListener("error", function () { say("reconnecting", "reconnecting…"); });
})();
