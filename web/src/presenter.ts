// The presenter token: scrubbing or playing takes it (renewed while moving, released
// shortly after), the presenter's steps go out as `set_room_frame`; everyone else follows the
// `room_frame` broadcast unless "follow" is off. The presenter's name is shown.
import { h } from "./dom";
import type { RoomSocket } from "./socket";

const TTL_MS = 5000;
const RENEW_MS = 2000;
const RELEASE_AFTER_MS = 1000;

interface Holder { author: string; expires_at: number }
interface RoomFrame { room: string; frame: number; by: string; step_seq: number }

export class Presenter {
  readonly element: HTMLElement;
  private readonly follow: HTMLInputElement;
  private readonly who: HTMLElement;
  private holding = false;
  private requesting: Promise<boolean> | null = null;
  private releaseTimer = 0;
  private lastRenew = 0;
  private lastStep = 0;
  private sending = false;
  private pendingFrame: number | null = null;

  constructor(private readonly room: string, private readonly socket: RoomSocket,
              private readonly author: string,
              private readonly followFrame: (frame: number) => void) {
    this.follow = h("input", { type: "checkbox", id: "follow", checked: true });
    this.who = h("span", { id: "presenter", class: "presenter" });
    this.element = h("span", { class: "presenter-box" },
      h("label", { title: "follow the presenter's frame" }, this.follow, " follow"), this.who);
    socket.on<RoomFrame>("room_frame", (m) => this.onRoomFrame(m));
    socket.on<{ room: string; presenter: Holder | null }>("presenter_changed", (m) => {
      if (m.room === room) this.showHolder(m.presenter);
    });
    this.showHolder(null);
  }

  get isPresenting(): boolean {
    return this.holding;
  }

  /** The join ack's step: show the current presenter and jump to its frame. */
  joined(step: { frame?: number; step_seq?: number; presenter?: Holder | null } | undefined): void {
    if (!step) return;
    this.showHolder(step.presenter ?? null);
    if (step.presenter && step.presenter.author !== this.author && typeof step.frame === "number"
        && (step.step_seq ?? 0) > this.lastStep) {
      this.lastStep = step.step_seq ?? 0;
      if (this.follow.checked) this.followFrame(step.frame);
    }
  }

  /** The user moved to `frame`: present it (taking the token if free); the token is
   *  released when no move follows within `holdMs`. */
  scrubbed(frame: number, holdMs = RELEASE_AFTER_MS): void {
    window.clearTimeout(this.releaseTimer);
    this.releaseTimer = window.setTimeout(() => void this.release(), holdMs);
    this.pendingFrame = frame;
    void this.present();
  }

  private async present(): Promise<void> {
    if (!(await this.take())) return;
    if (Date.now() - this.lastRenew > RENEW_MS) {
      this.lastRenew = Date.now();
      this.socket.request("presenter_renew", { room: this.room, ttl_ms: TTL_MS })
        .catch(() => { this.holding = false; });
    }
    if (this.sending) return; // the loop below sends the newest frame when done
    this.sending = true;
    try {
      while (this.pendingFrame !== null && this.holding) {
        const frame = this.pendingFrame;
        this.pendingFrame = null;
        const ack = await this.socket.request<{ step_seq: number }>(
          "set_room_frame", { room: this.room, frame });
        this.lastStep = Math.max(this.lastStep, ack.step_seq);
      }
    } catch {
      this.holding = false;
    } finally {
      this.sending = false;
    }
  }

  private take(): Promise<boolean> {
    if (this.holding) return Promise.resolve(true);
    this.requesting ??= this.socket.request("presenter_request", { room: this.room, ttl_ms: TTL_MS })
      .then(() => { this.holding = true; this.lastRenew = Date.now(); return true; },
        () => false) // someone else presents: scrub locally only
      .finally(() => { this.requesting = null; });
    return this.requesting;
  }

  private async release(): Promise<void> {
    await this.requesting;
    if (!this.holding || this.sending) {
      if (this.sending) this.releaseTimer = window.setTimeout(() => void this.release(), 100);
      return;
    }
    this.holding = false;
    try {
      await this.socket.request("presenter_release", { room: this.room });
    } catch { /* expired already: nothing to release */ }
  }

  private onRoomFrame(m: RoomFrame): void {
    if (m.room !== this.room || m.step_seq <= this.lastStep) return;
    this.lastStep = m.step_seq;
    if (this.holding || m.by === this.author) return;
    if (this.follow.checked) this.followFrame(m.frame);
  }

  private showHolder(holder: Holder | null): void {
    this.who.textContent = holder
      ? (holder.author === this.author ? "you are presenting" : `${holder.author} is presenting`)
      : "no presenter";
    this.who.dataset.author = holder?.author ?? "";
  }
}
