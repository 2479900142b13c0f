// The console's own script (no inline scripts: the Content-Security-Policy forbids them).
// - a checkbox with data-selects="NAME" checks or clears every checkbox named NAME;
// - a button with data-copy="ID" copies the text of the element with that id;
// - the overview does not refresh under a focused control (below).
document.addEventListener("change", function (event) {
  var box = event.target;
  if (!(box instanceof HTMLInputElement) || !box.dataset.selects) return;
  var form = box.form || document;
  form.querySelectorAll('input[type="checkbox"][name="' + box.dataset.selects + '"]')
    .forEach(function (other) { other.checked = box.checked; });
});
document.addEventListener("click", function (event) {
  var button = event.target.closest ? event.target.closest("[data-copy]") : null;
  if (!button) return;
  var source = document.getElementById(button.dataset.copy);
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "Copied";
  });
});
// The overview refreshes itself; a refresh while focus is on one of its controls would drop
// the keyboard user's place, so it waits until the focus has moved elsewhere.
document.addEventListener("htmx:beforeRequest", function (event) {
  var part = event.detail && event.detail.elt;
  if (part && part.id === "lanes" && part.contains(document.activeElement)) {
    event.preventDefault();
  }
});
