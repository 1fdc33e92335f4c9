// Live refresh of the events page: appends the events after the newest one shown,
// from the JSON twin. Text goes in through textContent, never as HTML. Without
// JavaScript the page is complete as served.
(function () {
  "use strict";
  var table = document.querySelector("table.events[data-live]");
  if (!table) return;
  var after = Number(table.getAttribute("data-after")) || 0;
  var body = table.querySelector("tbody");
  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }
  function poll() {
    fetch("/api/v1/events?after=" + after, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : []; })
      .then(function (events) {
        events.forEach(function (e) {
          var row = document.createElement("tr");
          cell(row, String(e.id));
          cell(row, new Date(e.at).toISOString().replace("T", " ").replace(/\..*/, " UTC"));
          cell(row, e.repo || "");
          cell(row, e.text || "");
          row.firstChild.className = "num";
          body.appendChild(row);
          after = Math.max(after, e.id);
        });
      })
      .catch(function () {})
      .then(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 2000);
})();
