// Readable messages for the user: transient toasts and one sticky connection banner.

export type ToastKind = "error" | "info";

const TOAST_MS = { error: 8000, info: 3000 } as const;

export function toast(message: string, kind: ToastKind = "info"): void {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = document.createElement("div");
  el.className = `toast toast-${kind}`;
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  el.textContent = message;
  el.addEventListener("click", () => el.remove());
  box.append(el);
  window.setTimeout(() => el.remove(), TOAST_MS[kind]);
}

export function showError(error: unknown, context = ""): void {
  if (error instanceof DOMException && error.name === "AbortError") return;
  const text = error instanceof Error ? error.message : String(error);
  toast(context ? `${context}: ${text}` : text, "error");
}

export function setBanner(message: string | null, kind: "warn" | "ok" = "warn"): void {
  const el = document.getElementById("banner");
  if (!el) return;
  el.hidden = message === null;
  el.textContent = message ?? "";
  el.className = `banner banner-${kind}`;
}
