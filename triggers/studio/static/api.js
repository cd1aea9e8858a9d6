// The API over the session cookie: every state-changing call carries X-Requested-With (the server's CSRF check).
export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

export async function api(path, { method = "GET", body, type = "application/json" } = {}) {
  const headers = { "X-Requested-With": "videostudio" };
  if (body !== undefined) headers["Content-Type"] = type;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : (typeof body === "string" ? body : JSON.stringify(body)),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, data?.code ?? "http_" + response.status, data?.message ?? response.statusText);
  }
  return data;
}

export const signIn = (token) => api("/session", { method: "POST", body: { token } });
export const signOut = () => api("/session", { method: "DELETE" });
