// The API over the session cookie: every state-changing call carries X-Requested-With (the server's CSRF check).
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message); this.status = status; this.code = code; this.details = details ?? [];
  }
}

const CSRF = { "X-Requested-With": "videostudio" };
const errorOf = (status, data, statusText) =>
  new ApiError(status, data?.code ?? "http_" + status, data?.message ?? statusText, data?.details);

export async function api(path, { method = "GET", body, type = "application/json" } = {}) {
  const headers = { ...CSRF };
  if (body !== undefined) headers["Content-Type"] = type;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : (typeof body === "string" ? body : JSON.stringify(body)),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw errorOf(response.status, data, response.statusText);
  return data;
}

// A multipart upload with progress: fetch() reports no upload progress, XMLHttpRequest does.
// onProgress(sentBytes, totalBytes); onStart(xhr) gets the request (to abort it); resolves to the JSON answer,
// rejects with an ApiError.
export function upload(path, form, onProgress, onStart = () => {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    onStart(xhr);
    xhr.open("POST", path);
    xhr.setRequestHeader("X-Requested-With", CSRF["X-Requested-With"]);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else reject(errorOf(xhr.status, xhr.response, xhr.statusText));
    });
    // A server that refuses a body mid-way may close the connection before the browser reads its answer.
    xhr.addEventListener("error", () => reject(new ApiError(0, "upload_interrupted",
      "the connection closed during the upload: the file may be over the server's limit, or the server stopped")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "upload_cancelled", "the upload was cancelled")));
    xhr.send(form);
  });
}

let info = null;
// GET /info once per page load: the upload limit, file types and avatar backends.
export const serverInfo = () => (info ??= api("/info").catch((err) => { info = null; throw err; }));

export const signIn = (token) => api("/session", { method: "POST", body: { token } });
export const signOut = () => api("/session", { method: "DELETE" });
