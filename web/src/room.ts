// The room page: wires the index (live over Socket.IO), the frame cache, the viewer,
// the timeline and playback together.
import { ApiError, author, getIndex, type DisplayFrame } from "./api";
import { h } from "./dom";
import { FrameCache } from "./framecache";
import { setBanner, showError, toast } from "./notify";
import { Player } from "./player";
import { Presenter } from "./presenter";
import { Uploader } from "./upload";
import { Editor, type LockHolder } from "./editor";
import { IndexState, type FramesChanged } from "./roomindex";
import { Viewer } from "./scene";
import { RoomSocket, type JoinAck } from "./socket";
import { Timeline } from "./timeline";

const PREFETCH_SECONDS = 2;
const MIN_PREFETCH = 8;

export class RoomPage {
  readonly viewer: Viewer;
  readonly timeline: Timeline;
  readonly index = new IndexState();
  readonly cache: FrameCache;
  readonly player: Player;
  readonly socket: RoomSocket;
  readonly presenter: Presenter;
  readonly uploader: Uploader;
  readonly editor: Editor;
  readonly author = author();
  frame = 0;
  private shownHash: string | undefined;
  private scrub: AbortController | null = null;
  private prefetching: AbortController | null = null;
  private syncing = false;
  private queued: FramesChanged[] = [];
  private readonly emptyNote: HTMLElement;

  constructor(readonly room: string, root: HTMLElement) {
    const stage = h("div", { class: "stage", id: "stage" });
    this.emptyNote = h("div", { class: "empty-note", hidden: true },
      "This room has no frames yet. Drop a trajectory file here, or add frames from Python: ",
      h("code", {}, `Room(url, room="${room}").extend(frames)`));
    root.append(header(room), stage, this.emptyNote);
    this.viewer = new Viewer(stage);
    this.cache = new FrameCache(room, () => this.index.hashes);
    this.player = new Player({ advance: () => this.advance(),
      changed: (playing) => this.timeline.setPlaying(playing) });
    this.timeline = new Timeline({
      seek: (i) => { this.player.pause(); this.seek(i); this.presenter.scrubbed(this.frame); },
      togglePlay: () => this.player.toggle(),
      speedChanged: (fps) => { this.player.fps = fps; },
    });
    root.append(this.timeline.element);
    this.socket = new RoomSocket(room, {
      joined: (ack, again) => this.onJoined(ack, again),
      framesChanged: (m) => this.onFramesChanged(m),
      connectionLost: () => setBanner("Connection lost; reconnecting…", "warn"),
      failed: (message) => toast(message, "error"),
    }, this.author);
    this.presenter = new Presenter(room, this.socket, this.author, (i) => this.seek(i));
    root.querySelector(".topbar")?.append(this.presenter.element);
    this.uploader = new Uploader(room, this.socket, this.author, root);
    root.querySelector(".topbar")?.append(this.uploader.element);
    this.editor = new Editor(this, stage);
    root.querySelector(".topbar")?.insertBefore(this.editor.element, this.presenter.element);
    this.socket.on<{ room: string; locks: LockHolder[] }>("lock_changed", (m) => {
      if (m.room === room) this.editor.setLocks(m.locks);
    });
  }

  /** The frame on screen, if it is loaded and current. */
  currentFrame(): { index: number; frame: DisplayFrame; hash: string } | null {
    const index = this.frame;
    const frame = this.cache.get(index);
    const hash = this.index.hashes[index];
    if (!frame || hash === undefined || hash !== this.shownHash) return null;
    return { index, frame, hash };
  }

  /** Frame `index`'s version while its content is `hash` (null if it changed since);
   *  read over HTTP when a live change left it unknown. */
  async versionOf(index: number, hash: string): Promise<number | null> {
    const known = this.index.versions[index];
    if (known !== undefined && this.index.hashes[index] === hash) return known;
    const fresh = await getIndex(this.room);
    return fresh.hashes[index] === hash ? fresh.versions[index]! : null;
  }

  /** Re-reads the index and redraws the current frame (after a refused edit). */
  async reload(): Promise<void> {
    await this.resync();
    this.seek(this.frame);
  }

  /** Shows frame `i` as soon as it is loaded; a newer seek makes this one stale. */
  seek(i: number): void {
    if (this.index.count === 0) return;
    this.frame = Math.min(Math.max(0, i), this.index.count - 1);
    this.updateTimeline();
    if (this.cache.has(this.frame)) {
      this.scrub?.abort();
      this.draw();
      return;
    }
    this.fetchCurrent();
  }

  private fetchCurrent(): void {
    this.scrub?.abort();
    const controller = new AbortController();
    this.scrub = controller;
    const wanted = this.frame;
    this.cache.load([wanted], controller.signal).then(() => {
      if (this.scrub === controller && this.frame === wanted) this.draw();
    }, (error: unknown) => {
      if (controller.signal.aborted) return;
      // a shared prefetch was aborted under us: still wanted, so ask again
      if (isAbort(error) && this.frame === wanted) this.fetchCurrent();
      else showError(error, `frame ${wanted}`);
    });
  }

  private draw(): void {
    const frame = this.cache.get(this.frame);
    if (!frame) return;
    this.viewer.show(frame);
    this.shownHash = this.index.hashes[this.frame];
    this.timeline.element.dataset.shown = String(this.frame);
    if (this.player.playing) this.prefetch();
  }

  private advance(): boolean {
    const n = this.index.count;
    if (n === 0) return false;
    const next = (this.frame + 1) % n;
    if (!this.cache.has(next)) {
      this.prefetch();
      return false;
    }
    this.frame = next;
    this.updateTimeline();
    this.draw();
    // playing presents too, holding the token across a couple of slow ticks
    this.presenter.scrubbed(this.frame, 1000 + 2000 / this.player.fps);
    return true;
  }

  /** Loads the next few seconds of playback (one request in flight at a time). */
  private prefetch(): void {
    if (this.prefetching) return;
    const n = this.index.count;
    const ahead = Math.min(n - 1, Math.max(MIN_PREFETCH, this.player.fps * PREFETCH_SECONDS));
    const wanted: number[] = [];
    for (let d = 1; d <= ahead; d++) {
      const i = (this.frame + d) % n;
      if (!this.cache.has(i) && !this.cache.isPending(i)) wanted.push(i);
    }
    if (wanted.length === 0) return;
    const controller = new AbortController();
    this.prefetching = controller;
    this.cache.load(wanted, controller.signal)
      .catch((error: unknown) => showError(error, "prefetch"))
      .finally(() => { this.prefetching = null; });
  }

  private onJoined(ack: JoinAck, reconnected: boolean): void {
    if (reconnected) {
      setBanner("Connection restored", "ok");
      window.setTimeout(() => setBanner(null), 2500);
    } else {
      setBanner(null);
    }
    if (ack.seq !== this.index.seq) void this.resync();
    if (Array.isArray(ack.locks)) this.editor.setLocks(ack.locks as LockHolder[]);
    this.presenter.joined(ack.step as Parameters<Presenter["joined"]>[0]);
  }

  private onFramesChanged(message: FramesChanged): void {
    if (this.syncing) {
      this.queued.push(message);
      return;
    }
    const result = this.index.apply(message);
    if (result === "gap") void this.resync();
    else if (result === "applied") this.indexChanged();
  }

  /** Re-reads the index over HTTP, then applies what arrived meanwhile. */
  async resync(): Promise<void> {
    if (this.syncing) return;
    this.syncing = true;
    try {
      this.index.reset(await getIndex(this.room));
    } catch (error) {
      showError(error, error instanceof ApiError ? "reading the room" : "");
    } finally {
      this.syncing = false;
    }
    const queued = this.queued.sort((a, b) => a.seq - b.seq);
    this.queued = [];
    for (const m of queued) {
      if (this.index.apply(m) === "gap") {
        void this.resync();
        return;
      }
    }
    this.indexChanged();
  }

  private indexChanged(): void {
    const n = this.index.count;
    const before = this.timeline.shownCount;
    const wasAtEnd = before > 0 && this.frame >= before - 1;
    this.emptyNote.hidden = n > 0;
    if (n === 0) {
      this.player.pause();
      this.viewer.clear();
      this.frame = 0;
      this.updateTimeline();
      return;
    }
    // at the end of a growing trajectory, follow its tail (unless playing)
    const target = wasAtEnd && !this.player.playing ? n - 1 : Math.min(this.frame, n - 1);
    if (target !== this.frame || this.index.hashes[target] !== this.shownHash) {
      this.seek(target);
    } else {
      this.updateTimeline();
    }
  }

  private updateTimeline(): void {
    this.timeline.set(this.frame, this.index.count);
    this.editor.frameShown(this.frame);
  }
}

function isAbort(error: unknown): boolean {
  return error instanceof DOMException && error.name === "AbortError";
}

function header(room: string): HTMLElement {
  return h("header", { class: "topbar" },
    h("a", { href: "/", class: "brand" }, "trajhub"),
    h("span", { class: "room-name", id: "room-name" }, room));
}
