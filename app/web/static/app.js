// Small conveniences for the admin. Every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Ask before destructive actions.
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  // "Select all" boxes tick every box of the named group.
  document.querySelectorAll("input[data-select-all]").forEach((all) => {
    all.addEventListener("change", () => {
      const name = all.dataset.selectAll;
      all.form.querySelectorAll(`input[type=checkbox][name="${name}"]`).forEach((box) => {
        box.checked = all.checked;
      });
    });
  });
});
