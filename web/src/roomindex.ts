// The room's index (frame hashes by position) kept current from `frames_changed`
// messages; a message out of sequence means something was missed: resync over HTTP.
import type { RoomIndex } from "./api";

export interface FramesChanged {
  room: string; seq: number; kind: string; change: "insert" | "replace" | "delete";
  indices: number[]; hashes: string[]; n_frames: number;
}

export type ApplyResult = "applied" | "old" | "gap";

export class IndexState {
  seq = -1;
  hashes: string[] = [];
  /** Frame versions by position; undefined where a live change made them unknown
   *  (`frames_changed` carries hashes only). */
  versions: (number | undefined)[] = [];

  get count(): number {
    return this.hashes.length;
  }

  reset(index: RoomIndex): void {
    this.seq = index.seq;
    this.hashes = [...index.hashes];
    this.versions = [...index.versions];
  }

  apply(message: FramesChanged): ApplyResult {
    if (message.seq <= this.seq) return "old";
    if (message.seq !== this.seq + 1) return "gap";
    const next = changed(this.hashes, message);
    if (next === null || next.length !== message.n_frames) return "gap";
    this.hashes = next;
    this.versions = changed(this.versions.map(String), { ...message,
      hashes: message.hashes.map(() => "?") })!.map((v) => (v === "?" || v === "undefined" ? undefined : Number(v)));
    this.seq = message.seq;
    return "applied";
  }
}

function changed(hashes: string[], m: FramesChanged): string[] | null {
  if (m.indices.length !== m.hashes.length) return null;
  const out = [...hashes];
  if (m.change === "replace") {
    m.indices.forEach((i, k) => { out[i] = m.hashes[k]!; });
  } else if (m.change === "insert") {
    // ascending final positions: inserting in order puts each where it belongs
    const order = m.indices.map((i, k) => [i, k] as const).sort((a, b) => a[0] - b[0]);
    for (const [i, k] of order) out.splice(i, 0, m.hashes[k]!);
  } else if (m.change === "delete") {
    // positions before the deletion: remove from the back so earlier ones stay valid
    const sorted = [...m.indices].sort((a, b) => b - a);
    for (const i of sorted) out.splice(i, 1);
  } else {
    return null;
  }
  return out;
}
