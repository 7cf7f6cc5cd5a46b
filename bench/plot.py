"""Draws bench/sweep.sh's CSV: throughput and commit → consumer p99 against payload size.

Usage: plot.py CSV PNG ROWS RATE SECS
"""

import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"relay": "pg-outbox-relay, WAL → Kafka", "debezium-tuned": "Debezium 3.6.1, tuned"}


def main(path, png, rows, rate, secs):
    series = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            series[row["system"]].append(row)
    fig, (throughput, p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, points in series.items():
        points.sort(key=lambda r: int(r["payload_bytes"]))
        x = [int(r["payload_bytes"]) for r in points]
        label = LABELS.get(system, system)
        throughput.plot(x, [float(r["rows_per_s"]) for r in points], marker="o", label=label)
        p99.plot(x, [float(r["p99_ms"]) for r in points], marker="o", label=label)
    throughput.set(
        xscale="log",
        xlabel="payload (bytes)",
        ylabel="rows/s",
        title=f"drain of {rows} rows",
    )
    p99.set(
        xscale="log",
        yscale="log",
        xlabel="payload (bytes)",
        ylabel="p99 commit → consumer (ms)",
        title=f"{rate} entries/s for {secs} s",
    )
    for ax in (throughput, p99):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    throughput.set_ylim(bottom=0)
    fig.suptitle("2 cores, everything co-located (Postgres 15, Apache Kafka 4.1.1)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:6])
