// The web studio's router: one page per hash route, each returning a function that stops its streams.
import { api, ApiError, signOut } from "./api.js";
import { fail, main, show, showNav } from "./dom.js";
import { avatarsPage } from "./pages/avatars.js";
import { batchPage, batchesPage } from "./pages/batches.js";
import { createPage } from "./pages/create.js";
import { editorPage } from "./pages/editor.js";
import { jobPage } from "./pages/job.js";
import { jobsPage } from "./pages/jobs.js";
import { newAvatarPage } from "./pages/new-avatar.js";
import { signInPage } from "./pages/sign-in.js";

let cleanup = () => {};

const PAGES = {
  jobs: (parts) => (parts[1] ? jobPage(decodeURIComponent(parts[1]), { play: /\?play$/.test(location.hash) }) : jobsPage()),
  batches: (parts) => (parts[1] ? batchPage(decodeURIComponent(parts[1])) : batchesPage()),
  avatars: () => avatarsPage(),
  "new-avatar": () => newAvatarPage(),
  new: () => createPage(),
  editor: () => editorPage(),
};

async function route() {
  cleanup();
  cleanup = () => {};
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/jobs";
  try {
    await api("/jobs?limit=1");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      return signInPage(undefined, () => {
        if (!location.hash || location.hash === "#/sign-in") location.hash = "#/jobs"; else route();
      });
    }
    return show("videostudio", fail(err));
  }
  showNav(true);
  const parts = path.split("/").filter(Boolean);
  cleanup = (PAGES[parts[0]] ?? PAGES.jobs)(parts) ?? (() => {});
  main.focus({ preventScroll: true });
}

document.getElementById("sign-out").addEventListener("click", async () => {
  cleanup();
  cleanup = () => {};
  await signOut();
  if (location.hash === "#/sign-in") route(); else location.hash = "#/sign-in";
});
window.addEventListener("hashchange", route);
route();
