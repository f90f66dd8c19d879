// Frames by content hash (so an index shift or a revert reuses what is loaded), with a
// memory budget counted in atoms; least recently used frames go first.
import { DISPLAY_KEYS, getFrames, type DisplayFrame } from "./api";

const BUDGET_ATOMS = 3_000_000;
const MAX_PER_REQUEST = 64;

export class FrameCache {
  private readonly frames = new Map<string, DisplayFrame>();
  private readonly pending = new Map<string, Promise<void>>();
  private atoms = 0;

  constructor(private readonly room: string, private readonly hashes: () => string[]) {}

  get(index: number): DisplayFrame | undefined {
    const hash = this.hashes()[index];
    const frame = hash === undefined ? undefined : this.frames.get(hash);
    if (hash !== undefined && frame) { // refresh its place in the LRU order
      this.frames.delete(hash);
      this.frames.set(hash, frame);
    }
    return frame;
  }

  has(index: number): boolean {
    const hash = this.hashes()[index];
    return hash !== undefined && this.frames.has(hash);
  }

  isPending(index: number): boolean {
    const hash = this.hashes()[index];
    return hash !== undefined && this.pending.has(hash);
  }

  /** Loads the frames at `indices` not yet cached (waits for ones already in flight). */
  async load(indices: number[], signal?: AbortSignal): Promise<void> {
    const hashes = this.hashes();
    const waits: Promise<void>[] = [];
    const missing: number[] = [];
    for (const i of indices) {
      const hash = hashes[i];
      if (hash === undefined || this.frames.has(hash)) continue;
      const inflight = this.pending.get(hash);
      if (inflight) waits.push(inflight); else missing.push(i);
    }
    for (let k = 0; k < missing.length; k += MAX_PER_REQUEST) {
      waits.push(this.fetch(missing.slice(k, k + MAX_PER_REQUEST), hashes, signal));
    }
    await Promise.all(waits);
  }

  private fetch(indices: number[], hashes: string[], signal?: AbortSignal): Promise<void> {
    const wanted = indices.map((i) => hashes[i]!);
    const request = getFrames(this.room, indices, DISPLAY_KEYS, signal).then((answer) => {
      answer.frames.forEach((frame, k) => this.store(answer.hashes[k]!, frame));
    });
    const done = request.finally(() => wanted.forEach((h) => this.pending.delete(h)));
    wanted.forEach((h) => this.pending.set(h, done));
    return done;
  }

  private store(hash: string, frame: DisplayFrame): void {
    if (this.frames.has(hash)) return;
    this.frames.set(hash, frame);
    this.atoms += frame.numbers.length;
    for (const [old, f] of this.frames) {
      if (this.atoms <= BUDGET_ATOMS || this.frames.size <= 2) break;
      this.frames.delete(old);
      this.atoms -= f.numbers.length;
    }
  }
}
