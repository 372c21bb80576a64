// Small conveniences for the admin. Every page works without this file.
"use strict";
// With scripts on, narrow screens fold the menu behind its button (see app.css).
document.documentElement.classList.add("js");
document.addEventListener("DOMContentLoaded", () => {
  const menu = document.querySelector(".menu-button");
  if (menu) {
    menu.addEventListener("click", () => {
      const open = menu.closest(".top").classList.toggle("open");
      menu.setAttribute("aria-expanded", String(open));
    });
  }
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
