// Sign-in: the API token goes to POST /session, which sets an HttpOnly cookie; the page never keeps it.
import { ApiError, signIn } from "../api.js";
import { h, show, showNav } from "../dom.js";

export function signInPage(message, onSignedIn) {
  showNav(false);
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password",
    required: true });
  const error = h("p", { id: "sign-in-error", class: "error", role: "alert", hidden: !message }, message ?? "");
  const form = h("form", { id: "sign-in", class: "card narrow", method: "post", action: "/session" },
    h("label", { for: "token" }, "API token"), input,
    h("p", { class: "muted" }, "The server's VIDEOSTUDIO_API_TOKEN. It is kept in an HttpOnly session cookie."),
    error, h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.hidden = true;
    try {
      await signIn(input.value);
      input.value = "";
      onSignedIn();
    } catch (err) {
      error.textContent = err instanceof ApiError && err.status === 401
        ? "That token is not valid. Check VIDEOSTUDIO_API_TOKEN and try again." : `Could not sign in: ${err.message}`;
      error.hidden = false;
      input.focus();
    }
  });
  show("Sign in", form);
  input.focus();
}

