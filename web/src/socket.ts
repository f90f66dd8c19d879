// The Socket.IO control channel: join the room on every (re)connect and report
// connection changes; generic `on`/`request` leave room for presenter and lock events.
import { io, type Socket } from "socket.io-client";
import type { FramesChanged } from "./roomindex";

export interface JoinAck { room: string; seq: number; n_frames: number; [extra: string]: unknown }

export interface RoomSocketHandlers {
  joined(ack: JoinAck, reconnected: boolean): void;
  framesChanged(message: FramesChanged): void;
  connectionLost(reason: string): void;
  failed(message: string): void;
}

const ACK_TIMEOUT_MS = 10_000;

export class RoomSocket {
  readonly socket: Socket;
  private everJoined = false;

  constructor(readonly room: string, private readonly handlers: RoomSocketHandlers,
              author?: string) {
    this.socket = io({ path: "/socket.io", auth: author ? { author } : {} });
    this.socket.on("connect", () => void this.join());
    this.socket.on("disconnect", (reason) => handlers.connectionLost(reason));
    this.socket.on("frames_changed", (m: FramesChanged) => {
      if (m.room === room) handlers.framesChanged(m);
    });
  }

  on<T>(event: string, handler: (data: T) => void): void {
    this.socket.on(event, handler);
  }

  /** Emits `event` and resolves with the ack; an `{error}` ack rejects. */
  async request<T>(event: string, data: object): Promise<T> {
    const ack = (await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, data)) as
      T & { error?: string; status?: number };
    if (ack && typeof ack === "object" && "error" in ack && ack.error) {
      throw new Error(ack.status ? `${ack.status} ${ack.error}` : ack.error);
    }
    return ack;
  }

  private async join(): Promise<void> {
    try {
      const ack = await this.request<JoinAck>("join_room", { room: this.room });
      this.handlers.joined(ack, this.everJoined);
      this.everJoined = true;
    } catch (error) {
      this.handlers.failed(`could not join room ${this.room}: ${String(error)}`);
    }
  }
}
