// The gateway's HTTP API (docs/api.md). Every failure becomes an ApiError with the
// server's `detail`, so the page can show it.
import { encode } from "@msgpack/msgpack";
import { toFloat64, unpack, type WireFrame } from "./codec";

export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly body?: unknown) {
    super(message);
  }
}

export interface RoomSummary { room: string; n_frames: number; seq: number }
export interface RoomIndex {
  room: string; seq: number; n_frames: number;
  frame_ids: number[]; versions: number[]; hashes: string[];
}

/** What the viewer draws; `cell` is row-major 3x3 or null. */
export interface DisplayFrame {
  numbers: Float64Array;
  positions: Float64Array;
  cell: Float64Array | null;
  pbc: Float64Array | null;
}

export interface FramesAnswer {
  seq: number; n_frames: number; indices: number[]; hashes: string[];
  frames: DisplayFrame[];
}

export const DISPLAY_KEYS = ["numbers", "positions", "cell", "pbc"];

const base = "/api/v1";

async function failure(response: Response): Promise<ApiError> {
  let detail = response.statusText;
  let body: unknown;
  try {
    body = await response.json();
    const d = (body as { detail?: unknown }).detail;
    if (d !== undefined) detail = typeof d === "string" ? d : JSON.stringify(d);
  } catch { /* not JSON: keep the status text */ }
  return new ApiError(response.status, `${response.status} ${detail}`, body);
}

async function request(path: string, init?: RequestInit): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(base + path, init);
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") throw error;
    throw new ApiError(0, `the server is unreachable (${String(error)})`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

const room = (name: string): string => `/rooms/${encodeURIComponent(name)}`;

export async function listRooms(): Promise<RoomSummary[]> {
  const body = (await (await request("/rooms")).json()) as { rooms: RoomSummary[] };
  return body.rooms;
}

/** Creates an empty room; false if it already exists (it can still be opened). */
export async function createRoom(name: string): Promise<boolean> {
  try {
    await request(room(name), {
      method: "PUT", headers: { ...authorHeaders(), "Content-Type": "application/json" },
      body: "{}",
    });
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) return false;
    throw error;
  }
}

/** The time (seconds since the epoch) of the room's latest event, or null. */
export async function lastChange(name: string, seq: number): Promise<number | null> {
  const path = `${room(name)}/history?since=${Math.max(0, seq - 1)}&limit=1`;
  const body = (await (await request(path)).json()) as { events: { time: number }[] };
  return body.events[0]?.time ?? null;
}

/** The room's index; an unknown room is an empty one (it exists once written). */
export async function getIndex(name: string, signal?: AbortSignal): Promise<RoomIndex> {
  try {
    return (await (await request(`${room(name)}/index`, { signal })).json()) as RoomIndex;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      return { room: name, seq: 0, n_frames: 0, frame_ids: [], versions: [], hashes: [] };
    }
    throw error;
  }
}

export async function getFrames(name: string, indices: number[], keys: string[],
                                signal?: AbortSignal): Promise<FramesAnswer> {
  const query = `indices=${indices.join(",")}&keys=${keys.join(",")}`;
  const response = await request(`${room(name)}/frames?${query}`, { signal });
  const message = unpack<Omit<FramesAnswer, "frames"> & { frames: WireFrame[] }>(
    await response.arrayBuffer());
  return { ...message, frames: message.frames.map(toDisplay) };
}

function toDisplay(frame: WireFrame): DisplayFrame {
  const numbers = frame.numbers;
  const positions = frame.positions;
  if (!numbers || !positions) throw new Error("a frame without numbers or positions");
  return {
    numbers: toFloat64(numbers),
    positions: toFloat64(positions),
    cell: frame.cell ? toFloat64(frame.cell) : null,
    pbc: frame.pbc ? toFloat64(frame.pbc) : null,
  };
}

/** Who this browser is (named in locks, steps and undo): stored once per browser. */
export function author(): string {
  let name = localStorage.getItem("trajhub.author");
  if (!name) {
    name = `guest-${Math.random().toString(36).slice(2, 8)}`;
    localStorage.setItem("trajhub.author", name);
  }
  return name;
}

export interface LockGrant { token: string; fence: number; expires_at: number }

function authorHeaders(): Record<string, string> {
  return { "X-Trajhub-Author": author() };
}

/** Takes a lock on frames `indices` (423 with the holder if someone else has one). */
export async function takeLock(name: string, indices: number[], message?: string): Promise<LockGrant> {
  const response = await request(`${room(name)}/locks`, {
    method: "POST",
    headers: { ...authorHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify({ target: { frames: indices }, ttl_ms: 30000, message }),
  });
  return (await response.json()) as LockGrant;
}

export async function releaseLock(name: string, token: string): Promise<void> {
  await request(`${room(name)}/locks/${encodeURIComponent(token)}`,
    { method: "DELETE", headers: authorHeaders() });
}

/** PATCHes frame `index`'s positions against `baseVersion`, under `lock`. */
export async function patchPositions(name: string, index: number, positions: Float64Array,
                                     baseVersion: number, lock: LockGrant): Promise<void> {
  const bytes = new Uint8Array(positions.buffer.slice(
    positions.byteOffset, positions.byteOffset + positions.byteLength));
  const body = encode({ frame: { positions: {
    dtype: "<f8", shape: [positions.length / 3, 3], data: bytes } } });
  const response = await request(`${room(name)}/frames/${index}`, {
    method: "PATCH",
    headers: { ...authorHeaders(), "Content-Type": "application/msgpack",
      "If-Match": `"${baseVersion}"`, "X-Trajhub-Lock": lock.token,
      "X-Trajhub-Fence": String(lock.fence) },
    body,
  });
  await response.arrayBuffer();
}

/** Reverts (undo) or re-applies (redo) this browser's author's latest edit. */
export async function undoRedo(name: string, which: "undo" | "redo"): Promise<void> {
  await request(`${room(name)}/${which}`, { method: "POST", headers: authorHeaders() });
}
