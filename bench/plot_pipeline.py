"""Plot the pipeline benchmark results and print them as a markdown table.

    python bench/plot_pipeline.py [RESULTS_JSON] [--out bench/pipeline.png]

RESULTS_JSON defaults to ``.benchmarks/pipeline_results.json`` (written by
``bench/bench_pipeline.py``).
"""
from __future__ import annotations

import argparse
import json

SCENARIOS = [("movement", "1. data movement"), ("mixed", "2. mixed"),
             ("fanout", "3. four DAGs, same input"), ("budget", "4. mixed, tight budget")]
MODES = ["copy", "zerrow-nocache", "zerrow-cold", "zerrow"]
COLORS = {"copy": "#999999", "zerrow-nocache": "#9ecae1", "zerrow-cold": "#4292c6", "zerrow": "#08519c"}
LABELS = {"copy": "copy (IPC files in /dev/shm)", "zerrow-nocache": "zerrow, no decode cache",
          "zerrow-cold": "zerrow, cache cold each round", "zerrow": "zerrow, cache warm"}


def gib(n):
    return n / (1 << 30)


def markdown(res) -> str:
    rows = ["| scenario | mode | mean s | vs copy | worker CPU-s | edge GiB | zero-copy | GiB copied | "
            "fewer copied | peak held GiB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, title in SCENARIOS:
        modes = res["scenarios"].get(key, {})
        base = modes.get("copy")
        for mode in MODES:
            m = modes.get(mode)
            if not m:
                continue
            speed = f"{base['mean_s'] / m['mean_s']:.2f}x" if base and mode != "copy" else "1.00x"
            fewer = (f"{1 - m['bytes_copied'] / max(1, base['bytes_copied']):.1%}"
                     if base and mode != "copy" else "-")
            extra = ""
            if m.get("budget"):
                extra = f" (budget {gib(m['budget']):.2f}, {m['spills']} spills)"
            cpu = f"{m['mean_cpu_s']:.1f}" if "mean_cpu_s" in m else "-"
            rows.append(f"| {title} | {mode} | {m['mean_s']:.2f} | {speed} | {cpu} | {gib(m['edge_bytes']):.1f} | "
                        f"{m['zero_copy_rate']:.1%} | {gib(m['bytes_copied']):.2f} | {fewer} | "
                        f"{gib(m['peak_held']):.2f}{extra} |")
    return "\n".join(rows)


def plot(res, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.2
    present = [(k, t) for k, t in SCENARIOS if k in res["scenarios"]]

    def series(j, mode, value):
        """(x, y, copy-baseline) for each scenario that measured ``mode``."""
        out = []
        for i, (key, _) in enumerate(present):
            m = res["scenarios"][key].get(mode)
            if m:
                out.append((i + (j - 1.5) * width, value(m), res["scenarios"][key].get("copy")))
        return out

    for j, mode in enumerate(MODES):
        pts = series(j, mode, lambda m: m["mean_s"])
        ax.bar([p[0] for p in pts], [p[1] for p in pts], width, label=LABELS[mode], color=COLORS[mode])
        for x, y, base in pts:
            if base and mode != "copy":
                ax.annotate(f"{base['mean_s'] / y:.1f}x", (x, y), ha="center", va="bottom", fontsize=8)
        pts = series(j, mode, lambda m: max(gib(m["bytes_copied"]), 1e-6))
        ax2.bar([p[0] for p in pts], [p[1] for p in pts], width, color=COLORS[mode])
        for x, y, _ in pts:
            if y <= 1e-6:
                ax2.annotate("0", (x, y), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(present)), [t for _, t in present], fontsize=9)
    ax.set_ylabel("seconds per run (mean)")
    ax.set_title(f"Pipeline wall time, {res['rows'] / 1e6:.0f}M trips, {res['workers']} workers")
    ax.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(present)), [t.split(".")[0] for _, t in present])
    ax2.set_ylabel("GiB copied per run (log)")
    ax2.set_title("Bytes copied to move tables")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="?", default=".benchmarks/pipeline_results.json")
    ap.add_argument("--out", default="bench/pipeline.png")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        res = json.load(f)
    plot(res, args.out)
    print(markdown(res))


if __name__ == "__main__":
    main()
