// The timeline bar: slider, "frame i / n", play/pause, speed; Space plays and pauses,
// the arrow keys step. It only reports intents; the room page decides what to show.
import { h } from "./dom";

export interface TimelineHandlers {
  seek(frame: number): void;
  togglePlay(): void;
  speedChanged(fps: number): void;
}

const SPEEDS = [1, 2, 5, 10, 20, 30, 60];
export const DEFAULT_FPS = 10;

export class Timeline {
  readonly element: HTMLElement;
  private readonly slider: HTMLInputElement;
  private readonly label: HTMLElement;
  private readonly playButton: HTMLButtonElement;
  private frame = 0;
  private count = 0;

  constructor(private readonly handlers: TimelineHandlers) {
    this.slider = h("input", { type: "range", min: 0, max: 0, value: 0, id: "slider",
      "aria-label": "frame" });
    this.slider.addEventListener("input", () => handlers.seek(Number(this.slider.value)));
    this.label = h("span", { id: "frame-label", class: "frame-label" });
    this.playButton = h("button", { id: "play", title: "play / pause (Space)",
      onclick: () => handlers.togglePlay() }, "▶");
    const speed = h("select", { id: "speed", title: "playback speed (frames per second)" },
      ...SPEEDS.map((fps) => h("option", { value: fps, selected: fps === DEFAULT_FPS },
        `${fps} fps`)));
    speed.addEventListener("change", () => handlers.speedChanged(Number(speed.value)));
    const step = (d: number, text: string, title: string): HTMLButtonElement =>
      h("button", { title, onclick: () => this.step(d) }, text);
    this.element = h("div", { class: "timeline", id: "timeline" },
      step(-1, "⏮", "previous frame (←)"), this.playButton, step(1, "⏭", "next frame (→)"),
      this.slider, this.label, speed);
    document.addEventListener("keydown", (e) => this.onKey(e));
    this.render();
  }

  get shownCount(): number {
    return this.count;
  }

  set(frame: number, count: number): void {
    this.frame = frame;
    this.count = count;
    this.render();
  }

  setPlaying(playing: boolean): void {
    this.playButton.textContent = playing ? "⏸" : "▶";
    this.element.dataset.playing = String(playing);
  }

  private step(delta: number): void {
    if (this.count === 0) return;
    this.handlers.seek(Math.min(this.count - 1, Math.max(0, this.frame + delta)));
  }

  private onKey(e: KeyboardEvent): void {
    const target = e.target as HTMLElement | null;
    const typing = target instanceof HTMLInputElement && target.type !== "range";
    if (typing || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement
        || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === " ") this.handlers.togglePlay();
    else if (e.key === "ArrowLeft") this.step(-1);
    else if (e.key === "ArrowRight") this.step(1);
    else return;
    e.preventDefault(); // no page scroll, no double step by a focused slider
  }

  private render(): void {
    this.slider.max = String(Math.max(0, this.count - 1));
    this.slider.value = String(this.frame);
    this.slider.disabled = this.count === 0;
    this.label.textContent = this.count === 0 ? "no frames" : `${this.frame} / ${this.count}`;
    this.element.dataset.frame = String(this.frame);
    this.element.dataset.count = String(this.count);
  }
}
