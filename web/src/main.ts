// Entry point: `/rooms/{room}` is the viewer, anything else the room list.
import "./style.css";
import { showError } from "./notify";
import { RoomPage } from "./room";
import { renderRoomList } from "./roomlist";

declare global {
  interface Window { trajhub?: { page: RoomPage } }
}

function main(): void {
  const root = document.getElementById("app")!;
  const match = /^\/rooms\/([^/]+)\/?$/.exec(location.pathname);
  if (match) {
    const room = decodeURIComponent(match[1]!);
    document.title = `${room} · trajhub`;
    document.body.classList.add("room-page");
    window.trajhub = { page: new RoomPage(room, root) }; // handle for tests and debugging
  } else {
    void renderRoomList(root);
  }
}

window.addEventListener("unhandledrejection", (e) => showError(e.reason));
main();
