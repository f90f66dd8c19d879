"""The whole benchmark suite: every workload beside its raw baseline, measured in one run.

    uv run python -m bench [--quick] [--only NAME[,NAME]] [--services] [--rss-gb 1,5]
                           [--plots] [--out PATH]

Workloads (``--only`` names): bulk (upload, read-all, cold read-all at three shapes; and
upload beside its floor: the bare transfer plus one sha256 of the same bytes),
frame (single frame fetch p50/p99), commit (latency, commits/s with 1 and 16 clients),
fanout (room_frame and frames_changed to 50 sockets at 60 Hz), join (join time vs
history length, beside joins of a room of 1,000 events timed in turn), rss (peak RSS of
all server processes while uploading --rss-gb gigabytes; slow at full size),
lag (storage apply lag vs a bare Zarr write).

The server is ``trajhub serve`` on an embedded Redis (``--services``: trajhub-control,
-storage, -snapshotter and -gateway as separate processes). Prints a table and writes
JSON to bench/results/<timestamp>.json (or ``--out``); ``--plots`` also writes
docs/bench_bulk.png, docs/bench_join.png and docs/bench_rss.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import _suite
from ._suite import FULL, QUICK, BareHttp, Row, Sizes

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
WORKLOADS = ("bulk", "frame", "commit", "fanout", "join", "lag", "rss")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke, < 2 min)")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(WORKLOADS)}")
    parser.add_argument("--services", action="store_true",
                        help="the four services as separate processes, not trajhub serve")
    parser.add_argument("--rss-gb", default="", help="upload sizes of the rss workload, GB "
                        "(default 1,5; --quick 0.05,0.1)")
    parser.add_argument("--plots", action="store_true", help="write docs/bench_*.png")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/<ts>.json)")
    args = parser.parse_args()
    only = [w for w in args.only.split(",") if w]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; choose from {WORKLOADS}")
    args.workloads = only or list(WORKLOADS)
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    if args.rss_gb:
        sizes = replace(sizes, rss_gb=[float(x) for x in args.rss_gb.split(",")])
    return sizes


def run(args: argparse.Namespace, sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    from _deploy import Deployment

    rows: list[Row] = []
    extra: dict[str, Any] = {"seconds": {}}
    shared = [w for w in args.workloads if w != "rss"]
    if shared:
        with tempfile.TemporaryDirectory() as tmp, BareHttp() as bare, \
                Deployment(Path(tmp), args.services) as dep:
            for name in shared:
                t0 = time.perf_counter()
                print(f"[{name}] ...", flush=True)
                if name == "bulk":
                    got = _suite.bench_bulk(dep, bare, sizes)
                elif name == "frame":
                    got = _suite.bench_frame(dep, bare, sizes)
                elif name == "commit":
                    got = _suite.bench_commit(dep, sizes)
                elif name == "fanout":
                    got = _suite.bench_fanout(dep, sizes)
                elif name == "join":
                    got = _suite.bench_join(dep, sizes)
                else:
                    got = _suite.bench_lag(dep, sizes)
                rows += got
                extra["seconds"][name] = round(time.perf_counter() - t0, 1)
    if "rss" in args.workloads:
        t0 = time.perf_counter()
        print("[rss] ...", flush=True)
        got, extra["rss"] = _suite.bench_rss(sizes, args.services)
        rows += got
        extra["seconds"]["rss"] = round(time.perf_counter() - t0, 1)
    return rows, extra


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(rows: list[Row]) -> str:
    head = ["workload", "figure", "value", "baseline", "ratio", "target", "pass"]
    body = [[r["workload"], r["figure"], f"{fmt(r['value'])} {r['unit']}",
             f"{fmt(r['baseline'])}" + (f" {r['unit']}" if r["baseline"] is not None else ""),
             fmt(r["ratio"]), r["target"] or "-",
             {True: "PASS", False: "FAIL", None: "-"}[r["pass"]]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
              for cells in body]
    return "\n".join(lines)


def plots(rows: list[Row], extra: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    bulk = [r for r in rows if r["workload"].startswith("bulk")]
    if bulk:
        fig, ax = plt.subplots(figsize=(7, 4))
        for fig_name, marker in (("upload", "o"), ("read_all", "s"), ("cold_read_all", "^")):
            pts = sorted((r["frames"], r["value"], r["baseline"]) for r in bulk
                         if r["figure"] == fig_name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker + "-",
                    label=f"trajhub {fig_name}")
            if fig_name != "cold_read_all":
                ax.plot([p[0] for p in pts], [p[2] for p in pts], marker + "--", alpha=0.6,
                        label=f"bare HTTP {fig_name}")
        ax.set(xscale="log", yscale="log", xlabel="frames (same bytes: see the JSON)",
               ylabel="seconds", title="bulk transfer time vs frames")
        written.append(_save(fig, ax, DOCS / "bench_bulk.png"))
    join = [r for r in rows if r["workload"].startswith("join")]
    if join:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([r["events"] for r in join], [r["value"] for r in join], "o-",
                label="join p50 (GET index + join_room)")
        ax.plot([r["events"] for r in join], [r["baseline"] for r in join], "s:",
                label=f"beside it: a room of {join[0]['baseline_events']:,} events")
        ax.plot([r["events"] for r in join], [r["healthz_p50_ms"] for r in join], "k--",
                label="GET /healthz p50")
        ax.set(xscale="log", xlabel="events in the room's history", ylabel="ms",
               title="join time vs history length", ylim=(0, None))
        written.append(_save(fig, ax, DOCS / "bench_join.png"))
    rss = extra.get("rss")
    if rss:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([p[0] for p in rss["series"]], [p[1] for p in rss["series"]], "-",
                label="after each batch")
        ax.plot([p["gb"] for p in rss["points"]], [p["peak_mb"] for p in rss["points"]], "o",
                label="peak so far")
        ax.axhline(rss["points"][0]["idle_mb"], color="k", ls="--", label="idle")
        ax.axhline(300, color="r", ls=":", label="300 MB target")
        ax.set(xlabel="GB uploaded", ylabel="MB (PSS, all server processes + Redis)",
               title="peak memory vs upload size", ylim=(0, None))
        written.append(_save(fig, ax, DOCS / "bench_rss.png"))
    return written


def _save(fig: Any, ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    args = parse()
    sizes = sizes_for(args)
    t0 = time.perf_counter()
    rows, extra = run(args, sizes)
    mode = "services" if args.services else "all-in-one"
    print(f"\ntrajhub ({mode}), {'quick' if args.quick else 'full'} sizes, "
          f"{os.cpu_count()} cpus\n")
    print(table(rows))
    out = args.out or HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"mode": mode, "quick": args.quick, "workloads": args.workloads,
              "sizes": sizes.__dict__, "cpus": os.cpu_count(), "rows": rows, **extra,
              "run_s": round(time.perf_counter() - t0, 1)}
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out} ({result['run_s']} s)")
    if args.plots:
        for path in plots(rows, extra):
            print(f"wrote {path}")
    failed = [r for r in rows if r["pass"] is False]
    print(f"{len(failed)} of {sum(r['pass'] is not None for r in rows)} targets missed")


if __name__ == "__main__":
    main()
