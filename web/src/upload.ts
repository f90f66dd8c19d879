// Drag and drop a trajectory file on the room page: its raw bytes go to
// POST .../upload; a progress bar shows the bytes sent, then the server's
// `upload_progress` phases for our upload_id. Errors become toasts.
import { h } from "./dom";
import { toast } from "./notify";
import type { RoomSocket } from "./socket";

interface Progress { room: string; upload_id: string; phase: string; done: number; total: number;
  message?: string }

export class Uploader {
  readonly element: HTMLElement;
  private readonly bar: HTMLProgressElement;
  private readonly text: HTMLElement;
  private current: string | null = null;

  constructor(private readonly room: string, socket: RoomSocket, private readonly author: string,
              target: HTMLElement) {
    this.bar = h("progress", { id: "upload-bar", max: 1, value: 0 });
    this.text = h("span", { id: "upload-text" });
    this.element = h("div", { class: "upload", id: "upload", hidden: true }, this.bar, this.text);
    socket.on<Progress>("upload_progress", (m) => {
      if (m.room === room && m.upload_id === this.current) this.show(m.phase, m.done, m.total);
    });
    target.addEventListener("dragover", (e) => {
      if (e.dataTransfer?.types.includes("Files")) {
        e.preventDefault();
        target.classList.add("dragging");
      }
    });
    target.addEventListener("dragleave", () => target.classList.remove("dragging"));
    target.addEventListener("drop", (e) => {
      target.classList.remove("dragging");
      const files = [...(e.dataTransfer?.files ?? [])];
      if (files.length === 0) return;
      e.preventDefault();
      void this.uploadAll(files);
    });
  }

  async uploadAll(files: File[]): Promise<void> {
    for (const file of files) {
      try {
        await this.upload(file);
      } catch (error) {
        this.show("error", 0, 1);
        toast(`upload of ${file.name} failed: ${error instanceof Error ? error.message : String(error)}`,
          "error");
      }
    }
  }

  private upload(file: File): Promise<void> {
    const id = `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    this.current = id;
    this.show("sending", 0, file.size);
    const url = `/api/v1/rooms/${encodeURIComponent(this.room)}/upload?filename=`
      + `${encodeURIComponent(file.name)}&upload_id=${id}`;
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.setRequestHeader("X-Trajhub-Author", this.author);
      xhr.upload.onprogress = (e) => {
        if (this.current === id && this.element.dataset.phase === "sending") {
          this.show("sending", e.loaded, e.total || file.size);
        }
      };
      xhr.onerror = () => reject(new Error("the server is unreachable"));
      xhr.onload = () => {
        let body: { detail?: unknown; n_frames?: number } = {};
        try { body = JSON.parse(xhr.responseText) as typeof body; } catch { /* not JSON */ }
        if (xhr.status >= 200 && xhr.status < 300) {
          this.show("done", body.n_frames ?? 1, body.n_frames ?? 1);
          toast(`${file.name}: ${body.n_frames ?? "?"} frames uploaded`);
          resolve();
        } else {
          const d = body.detail;
          const detail = d === undefined ? xhr.statusText : typeof d === "string" ? d : JSON.stringify(d);
          reject(new Error(`${xhr.status} ${detail}`));
        }
      };
      xhr.send(file);
    });
  }

  private show(phase: string, done: number, total: number): void {
    if (this.element.dataset.phase === "done" && phase !== "sending") return; // late broadcast
    this.element.hidden = false;
    this.element.dataset.phase = phase;
    this.bar.max = Math.max(1, total);
    this.bar.value = phase === "parsing" ? 0 : done;
    const labels: Record<string, string> = { sending: "sending", parsing: "parsing",
      storing: "storing frames", done: "uploaded", error: "upload failed" };
    this.text.textContent = `${labels[phase] ?? phase} ${phase === "parsing" ? "" : `${done} / ${total}`}`;
  }
}
