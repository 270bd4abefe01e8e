// Resident portal: the dynamic QR code's countdown and refresh, and the print button. No inline script: the
// page's Content-Security-Policy allows scripts from /portal/static only.
(function () {
  "use strict";
  var csrf = document.querySelector('meta[name="csrf-token"]');

  function setupQr() {
    var img = document.getElementById("qr");
    var counter = document.getElementById("countdown");
    if (!img || !counter) { return; }
    var refreshing = false;
    var skew = 0; // server clock minus browser clock, from the seconds the page was given
    var initialLeft = parseInt(counter.getAttribute("data-left"), 10);
    if (!isNaN(initialLeft)) {
      skew = (parseInt(img.getAttribute("data-expires"), 10) - initialLeft) - Math.floor(Date.now() / 1000);
    }
    function left() {
      return parseInt(img.getAttribute("data-expires"), 10) - (Math.floor(Date.now() / 1000) + skew);
    }
    function refresh() {
      if (refreshing) { return; }
      refreshing = true;
      fetch(img.getAttribute("data-refresh"), {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf ? csrf.getAttribute("content") : "", "Accept": "application/json" }
      }).then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      }).then(function (qr) {
        skew = (qr.expires - qr.left) - Math.floor(Date.now() / 1000);
        img.setAttribute("src", qr.src);
        img.setAttribute("data-token", qr.token);
        img.setAttribute("data-expires", String(qr.expires));
        tick();
      }).catch(function () {
        window.location.reload();
      }).then(function () { refreshing = false; });
    }
    function tick() {
      var s = Math.max(0, left());
      counter.textContent = String(s);
      if (s <= 10) { refresh(); }
    }
    var button = document.getElementById("refresh-qr");
    if (button) {
      button.addEventListener("click", function (ev) { ev.preventDefault(); refresh(); });
    }
    tick();
    window.setInterval(tick, 1000);
  }

  function setupPrint() {
    var button = document.getElementById("do-print");
    if (button) { button.addEventListener("click", function () { window.print(); }); }
  }

  document.addEventListener("DOMContentLoaded", function () { setupQr(); setupPrint(); });
}());
