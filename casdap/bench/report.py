"""The results of a run as text: one log line per measurement, a Markdown table, a JSON file."""

from __future__ import annotations

import json
import os
from typing import Any

from casdap.files import write_text

__all__ = ["format_table", "row_line", "write_json"]


def row_line(r: dict[str, Any]) -> str:
    """One measurement as a log line."""
    ips = r["images_per_s"]
    mem = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
    return (f"{r['model']:<9} {r['size']:>4} {r['mode']:<7} {r['variant']:<10} {r['batch']:>5} "
            f"{ips['median']:>9.1f} [{ips['min']:.1f}-{ips['max']:.1f}] {r['ms_per_batch']:>9.2f} ms  mem {mem} MB")


def format_table(result: dict[str, Any]) -> str:
    """The results as a Markdown table, then the ratios."""
    mm, machine = result["matmul_gflop_per_s"], result["machine"]
    lines = [
        f"fp32 matmul: {mm['median']:.1f} GFLOP/s (min {mm['min']:.1f}, max {mm['max']:.1f}); "
        f"{machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']}, device {machine['device']}",
        "",
        "| model | px | mode | variant | batch | images/s (median [min-max]) | ms/batch | GFLOP/img | GFLOP/s "
        "| % matmul | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        ips = r["images_per_s"]
        mem = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        lines.append(
            f"| {r['model']} | {r['size']} | {r['mode']} | {r['variant']} | {r['batch']} | "
            f"{ips['median']:.1f} [{ips['min']:.1f}-{ips['max']:.1f}] | {r['ms_per_batch']:.2f} | "
            f"{r['gflop_per_image']:.3f} | {r['gflop_per_s']:.1f} | {100 * r['fraction_of_matmul']:.0f}% | {mem} |"
        )
    if result["ratios"]:
        lines += ["", "| model | px | mode | variant | against | speed ratio (median [min-max]) | time ratio |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["ratios"]:
            s, t = r["speed_ratio"], r["time_ratio"]
            lines.append(f"| {r['model']} | {r['size']} | {r['mode']} | {r['variant']} | {r['against']} | "
                         f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}] | {t['median']:.2f} |")
    for p in result.get("parity", []):
        lines.append(f"parity {p['model']} {p['size']}px {p['variant']} vs {p.get('against', 'eager')}: "
                     f"max |diff| {p['max_abs_diff']:.2e}")
    return "\n".join(lines)



def write_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically, so an interrupted run never leaves half a file."""
    write_text(path, json.dumps(result, indent=2))
