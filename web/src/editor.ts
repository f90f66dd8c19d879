// Editing: click selects an atom (a CPU ray-sphere test), shift-click adds; dragging a
// selected atom moves the selection in the view plane. On release the new positions
// are PATCHed with the frame's version from when the drag began, under a frame lock.
// Undo / redo (buttons, Ctrl+Z / Ctrl+Shift+Z) revert this author's edits.
import * as THREE from "three";
import { ApiError, patchPositions, releaseLock, takeLock, undoRedo, type DisplayFrame } from "./api";
import { h } from "./dom";
import { radiusOf } from "./elements";
import { showError, toast } from "./notify";
import { ATOM_SCALE, type Viewer } from "./scene";

export interface EditorHost {
  readonly room: string;
  readonly viewer: Viewer;
  currentFrame(): { index: number; frame: DisplayFrame; hash: string } | null;
  versionOf(index: number, hash: string): Promise<number | null>;
  reload(): Promise<void>;
}

export interface LockHolder { author: string; target: { room?: boolean; indices?: number[] } | null }

interface Drag {
  index: number; version: Promise<number | null>; frame: DisplayFrame; working: Float64Array;
  plane: THREE.Plane; start: THREE.Vector3; moved: boolean; pointerId: number;
}

export class Editor {
  readonly element: HTMLElement;
  selection = new Set<number>();
  private drag: Drag | null = null;
  /** The last edit's save, lock release included: an undo or redo waits for it (sent
   *  before the release lands, it would be refused by this browser's own lock). */
  private saving: Promise<void> = Promise.resolve();
  private readonly status: HTMLElement;
  private readonly lockNote: HTMLElement;
  private locks: LockHolder[] = [];
  private shownIndex = 0;
  private readonly raycaster = new THREE.Raycaster();

  constructor(private readonly host: EditorHost, stage: HTMLElement) {
    this.status = h("span", { id: "selection", class: "selection" });
    this.lockNote = h("span", { id: "lock-note", class: "lock-note" });
    this.element = h("span", { class: "edit-box" },
      h("button", { id: "undo", title: "undo your last edit (Ctrl+Z)",
        onclick: () => void this.undoRedo("undo") }, "↶ undo"),
      h("button", { id: "redo", title: "redo (Ctrl+Shift+Z)",
        onclick: () => void this.undoRedo("redo") }, "↷ redo"),
      this.status, this.lockNote);
    // capture: we see the pointer before the orbit controls and keep drags on atoms
    stage.addEventListener("pointerdown", (e) => this.onDown(e), { capture: true });
    stage.addEventListener("pointermove", (e) => this.onMove(e), { capture: true });
    stage.addEventListener("pointerup", (e) => void this.onUp(e), { capture: true });
    document.addEventListener("keydown", (e) => this.onKey(e));
    this.render();
  }

  /** The room's live locks (join ack, `lock_changed`): the shown frame's holder is named. */
  setLocks(locks: LockHolder[]): void {
    this.locks = locks;
    this.renderLock();
  }

  frameShown(index: number): void {
    this.shownIndex = index;
    this.renderLock();
  }

  private renderLock(): void {
    const i = this.shownIndex;
    const holders = this.locks.filter((l) => l.target?.room || l.target?.indices?.includes(i));
    const names = [...new Set(holders.map((l) => l.author))];
    this.lockNote.textContent = names.length ? `🔒 frame ${i} locked by ${names.join(", ")}` : "";
    this.lockNote.dataset.holders = names.join(",");
  }

  /** Atom `i`'s centre in page (CSS pixel) coordinates, for tests and tooling. */
  screenPosition(i: number): { x: number; y: number } | null {
    const current = this.host.currentFrame();
    if (!current) return null;
    const p = current.frame.positions;
    const v = new THREE.Vector3(p[3 * i], p[3 * i + 1], p[3 * i + 2]).project(this.host.viewer.camera);
    const rect = this.host.viewer.renderer.domElement.getBoundingClientRect();
    return { x: rect.left + (v.x + 1) / 2 * rect.width, y: rect.top + (1 - v.y) / 2 * rect.height };
  }

  /** The nearest atom under page point (x, y), or -1. */
  pick(x: number, y: number, frame: DisplayFrame): number {
    this.setRay(x, y);
    const ray = this.raycaster.ray;
    const p = frame.positions;
    const centre = new THREE.Vector3();
    let best = -1;
    let bestT = Infinity;
    for (let i = 0; i < frame.numbers.length; i++) {
      centre.set(p[3 * i]!, p[3 * i + 1]!, p[3 * i + 2]!);
      const r = radiusOf(frame.numbers[i]!) * ATOM_SCALE;
      const t = ray.origin.clone().sub(centre).dot(ray.direction); // -(along-ray distance)
      const along = -t;
      const d2 = ray.distanceSqToPoint(centre);
      if (d2 > r * r || along < 0) continue;
      const hit = along - Math.sqrt(r * r - d2);
      if (hit < bestT) { bestT = hit; best = i; }
    }
    return best;
  }

  private setRay(x: number, y: number): void {
    const rect = this.host.viewer.renderer.domElement.getBoundingClientRect();
    const ndc = new THREE.Vector2((x - rect.left) / rect.width * 2 - 1,
      -((y - rect.top) / rect.height) * 2 + 1);
    this.raycaster.setFromCamera(ndc, this.host.viewer.camera);
  }

  private onDown(e: PointerEvent): void {
    if (e.button !== 0 || this.drag) return;
    const current = this.host.currentFrame();
    if (!current) return;
    const atom = this.pick(e.clientX, e.clientY, current.frame);
    if (atom < 0) {
      if (!e.shiftKey) this.select(new Set());
      return; // empty space: orbit as usual
    }
    e.stopPropagation();
    if (e.shiftKey) this.select(new Set([...this.selection, atom]));
    else if (!this.selection.has(atom)) this.select(new Set([atom]));
    const p = current.frame.positions;
    const start = new THREE.Vector3(p[3 * atom], p[3 * atom + 1], p[3 * atom + 2]);
    const normal = new THREE.Vector3();
    this.host.viewer.camera.getWorldDirection(normal);
    const version = this.host.versionOf(current.index, current.hash);
    version.catch(() => null); // reported at commit
    this.drag = { index: current.index, version, frame: current.frame,
      working: current.frame.positions.slice(), plane: new THREE.Plane().setFromNormalAndCoplanarPoint(normal, start),
      start, moved: false, pointerId: e.pointerId };
    (e.target as Element).setPointerCapture?.(e.pointerId);
  }

  private onMove(e: PointerEvent): void {
    const drag = this.drag;
    if (!drag || e.pointerId !== drag.pointerId) return;
    e.stopPropagation();
    this.setRay(e.clientX, e.clientY);
    const point = this.raycaster.ray.intersectPlane(drag.plane, new THREE.Vector3());
    if (!point) return;
    const delta = point.sub(drag.start);
    const from = drag.frame.positions;
    for (const i of this.selection) {
      drag.working[3 * i] = from[3 * i]! + delta.x;
      drag.working[3 * i + 1] = from[3 * i + 1]! + delta.y;
      drag.working[3 * i + 2] = from[3 * i + 2]! + delta.z;
    }
    drag.moved = true;
    this.host.viewer.show({ ...drag.frame, positions: drag.working });
  }

  private async onUp(e: PointerEvent): Promise<void> {
    const drag = this.drag;
    if (!drag || e.pointerId !== drag.pointerId) return;
    e.stopPropagation();
    this.drag = null;
    if (!drag.moved) return;
    this.saving = this.commit(drag);
    await this.saving;
  }

  private async commit(drag: Drag): Promise<void> {
    const { room } = this.host;
    let lock;
    let version: number | null;
    try {
      version = await drag.version;
    } catch (error) {
      this.failed(error, drag.index);
      return;
    }
    if (version === null) {
      this.failed(new ApiError(409, "changed since the drag began"), drag.index);
      return;
    }
    try {
      lock = await takeLock(room, [drag.index], "moving atoms");
    } catch (error) {
      this.failed(error, drag.index);
      return;
    }
    try {
      await patchPositions(room, drag.index, drag.working, version, lock);
    } catch (error) {
      this.failed(error, drag.index);
    } finally {
      await releaseLock(room, lock.token).catch(() => { /* expired: gone anyway */ });
    }
  }

  private failed(error: unknown, index: number): void {
    if (error instanceof ApiError && error.status === 409) {
      toast(`Conflict: frame ${index} was changed by someone else while you were editing it. `
        + "Your edit was not saved; the frame has been reloaded.", "error");
    } else if (error instanceof ApiError && error.status === 423) {
      const holder = (error.body as { holder?: { author?: string } } | undefined)?.holder;
      toast(`Frame ${index} is locked by ${holder?.author ?? "someone else"}; your edit was not saved.`,
        "error");
    } else {
      showError(error, "saving the edit");
    }
    void this.host.reload();
  }

  private async undoRedo(which: "undo" | "redo"): Promise<void> {
    try {
      await this.saving;
      await undoRedo(this.host.room, which);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) toast(`nothing to ${which}`);
      else showError(error, which);
    }
  }

  private onKey(e: KeyboardEvent): void {
    if (!(e.ctrlKey || e.metaKey) || e.key.toLowerCase() !== "z") return;
    if (e.target instanceof HTMLInputElement && e.target.type === "text") return;
    e.preventDefault();
    void this.undoRedo(e.shiftKey ? "redo" : "undo");
  }

  private select(selection: Set<number>): void {
    this.selection = selection;
    this.host.viewer.setSelection(selection);
    this.render();
  }

  private render(): void {
    const n = this.selection.size;
    this.status.textContent = n === 0 ? "" : `${n} atom${n === 1 ? "" : "s"} selected`;
    this.status.dataset.atoms = [...this.selection].join(",");
  }
}
