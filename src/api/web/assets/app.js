// Live updates: the server names what changed over server-sent events; the page fetches its
// own `main` again and swaps it in. Nothing is drawn here, so pages look the same either way.
"use strict";
(function () {
  const main = document.querySelector("main[data-live]");
  const status = document.getElementById("live-status");
  if (!main || !window.EventSource) {
    return;
  }
  let running = false;
  let again = false;
  let waiting = false;

  // Someone typing into a form, or with a dialog open, is not interrupted: the refresh waits.
  function busy() {
    const active = document.activeElement;
    if (active && main.contains(active) && active.matches("input, textarea, select")) {
      return true;
    }
    return main.querySelector("details.dialog[open]") !== null;
  }

  async function refresh() {
    if (running) {
      again = true;
      return;
    }
    if (busy()) {
      waiting = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        const response = await fetch(window.location.href, {
          headers: { "X-Stagehand-Partial": "1" },
          credentials: "same-origin",
          cache: "no-store",
          redirect: "manual",
        });
        if (response.status === 401 || response.type === "opaqueredirect") {
          window.location.assign("/ui/sign-in");
          return;
        }
        if (!response.ok) {
          break;
        }
        const html = await response.text();
        const open = Array.from(main.querySelectorAll("details[id][open]"), (d) => d.id);
        main.innerHTML = html;
        for (const id of open) {
          const details = document.getElementById(id);
          if (details) {
            details.open = true;
          }
        }
        if (status) {
          status.textContent = "Updated " + new Date().toLocaleTimeString();
        }
      } while (again);
    } catch (error) {
      if (status) {
        status.textContent = "Live updates paused: " + error;
      }
    } finally {
      running = false;
    }
  }

  main.addEventListener("focusout", function () {
    if (waiting) {
      waiting = false;
      window.setTimeout(refresh, 0);
    }
  });
  main.addEventListener("toggle", function () {
    if (waiting) {
      waiting = false;
      window.setTimeout(refresh, 0);
    }
  }, true);

  const events = new EventSource("/ui/events");
  events.addEventListener("change", refresh);
  events.addEventListener("signed-out", function () {
    events.close();
    window.location.assign("/ui/sign-in");
  });
  events.addEventListener("open", function () {
    document.documentElement.dataset.live = "on";
  });
  events.addEventListener("error", function () {
    document.documentElement.dataset.live = "reconnecting";
  });
})();
