// Playback timing: advances one frame per tick, but only onto a frame that is loaded,
// so slow networks stall playback instead of skipping frames.
import { DEFAULT_FPS } from "./timeline";

export interface PlayerHooks {
  /** Shows the next frame if it is ready; false stalls this tick. */
  advance(): boolean;
  changed(playing: boolean): void;
}

export class Player {
  fps = DEFAULT_FPS;
  private timer: number | null = null;

  constructor(private readonly hooks: PlayerHooks) {}

  get playing(): boolean {
    return this.timer !== null;
  }

  toggle(): void {
    if (this.playing) this.pause(); else this.play();
  }

  play(): void {
    if (this.playing) return;
    this.schedule();
    this.hooks.changed(true);
  }

  pause(): void {
    if (this.timer === null) return;
    window.clearTimeout(this.timer);
    this.timer = null;
    this.hooks.changed(false);
  }

  private schedule(): void {
    this.timer = window.setTimeout(() => {
      this.hooks.advance();
      if (this.timer !== null) this.schedule();
    }, 1000 / this.fps);
  }
}
