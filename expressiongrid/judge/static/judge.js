// Keyboard shortcuts for the judging page. Served as a file (not inline) so the page's
// Content-Security-Policy can forbid inline scripts.
"use strict";
(function () {
  var form = document.getElementById("answer-form");
  if (!form) return;
  var keys = {
    "ArrowLeft": "left", "1": "left",
    "ArrowRight": "right", "2": "right",
    "=": "equal", "e": "equal", "E": "equal",
    "s": "skip", "S": "skip"
  };
  var sent = false;
  function send(answer) {
    // One answer per page: a held-down key must not post the same token twice.
    if (sent) return;
    var button = form.querySelector('button[value="' + answer + '"]');
    if (!button) return;
    sent = true;
    button.classList.add("chosen");
    form.requestSubmit(button);
  }
  form.addEventListener("submit", function () { sent = true; });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
    var answer = keys[event.key];
    if (answer) {
      event.preventDefault();
      send(answer);
    }
  });
})();
