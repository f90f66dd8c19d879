// The room list at `/`: every room with its frame count and last change, and a form
// that creates a room (empty, listed from then on) and opens it.
import { createRoom, lastChange, listRooms, type RoomSummary } from "./api";
import { h } from "./dom";
import { showError } from "./notify";

const ROOM_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const LAST_CHANGE_LOOKUPS = 50;

export function roomUrl(room: string): string {
  return `/rooms/${encodeURIComponent(room)}`;
}

export async function renderRoomList(root: HTMLElement): Promise<void> {
  const table = h("tbody", { id: "rooms" });
  root.append(h("main", { class: "home" },
    h("h1", {}, "trajhub"),
    createForm(),
    h("h2", {}, "Rooms"),
    h("table", { class: "rooms" },
      h("thead", {}, h("tr", {}, h("th", {}, "room"), h("th", {}, "frames"),
        h("th", {}, "last change"))),
      table),
    h("p", { class: "hint" }, "From Python: ",
      h("code", {}, `from trajhub import Room; Room("${location.origin}", room="demo")`),
      " · ", h("a", { href: "/docs" }, "API docs"))));
  try {
    fillRooms(table, await listRooms());
  } catch (error) {
    showError(error, "listing rooms");
  }
}

function createForm(): HTMLFormElement {
  const input = h("input", { name: "room", placeholder: "room name", required: true,
    pattern: ROOM_NAME.source, maxlength: 64, id: "new-room" });
  const form = h("form", { class: "create" }, input, h("button", { type: "submit" }, "Create room"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const name = input.value.trim();
    if (!ROOM_NAME.test(name) || name.includes("..")) {
      showError(new Error("room names use letters, digits, _ . - (at most 64, no '..')"));
      return;
    }
    createRoom(name).then(() => location.assign(roomUrl(name)),
      (error: unknown) => showError(error, `creating room ${name}`));
  });
  return form;
}

function fillRooms(table: HTMLElement, rooms: RoomSummary[]): void {
  if (rooms.length === 0) {
    table.append(h("tr", {}, h("td", { colspan: 3 }, "No rooms yet: create one above.")));
    return;
  }
  rooms.sort((a, b) => a.room.localeCompare(b.room));
  rooms.forEach((r, k) => {
    const when = h("td", { class: "when" }, "…");
    table.append(h("tr", {},
      h("td", {}, h("a", { href: roomUrl(r.room) }, r.room)),
      h("td", { class: "num" }, String(r.n_frames)), when));
    if (k < LAST_CHANGE_LOOKUPS) void showLastChange(when, r);
    else when.textContent = "";
  });
}

async function showLastChange(cell: HTMLElement, r: RoomSummary): Promise<void> {
  try {
    const time = await lastChange(r.room, r.seq);
    cell.textContent = time === null ? "" : new Date(time * 1000).toLocaleString();
  } catch {
    cell.textContent = "unknown"; // the list itself loaded; one missing date is no error
  }
}
