#!/usr/bin/env python3
"""Turns bench/results/<run>/results.json into report.md and SVG charts (throughput, p50/p99)."""

import json
import sys
from pathlib import Path

GOALS = [
    ("product ≥ 0.5× HTTP ceiling throughput", lambda s: s["product"]["ratio_to_http_ceiling"], lambda v: v >= 0.5, "{:.3f}×"),
    ("product p99 ≤ 10 ms at 70% of peak", lambda s: s["product"]["fixed_70pct"]["p99_ms"], lambda v: v <= 10, "{:.2f} ms"),
    ("actor path ≥ 0.9× direct path", lambda s: s["product"]["actor_tax_ratio"], lambda v: v >= 0.9, "{:.3f}×"),
    ("product: cache hit ratio > 99%", lambda s: s["product"]["cache_hit_ratio"], lambda v: v > 0.99, "{:.4%}"),
    ("product p99 ≤ 2× the HTTP ceiling's p99", lambda s: s["product"]["p99_to_ceiling_p99"], lambda v: v <= 2.0, "{:.2f}×"),
    ("list first pages ≥ 0.3× HTTP ceiling throughput", lambda s: s["list"]["ratio_to_http_ceiling"], lambda v: v >= 0.3, "{:.3f}×"),
    ("checkout ≥ 0.5× pgbench ceiling", lambda s: s["checkout"]["ratio_to_pgbench"], lambda v: v >= 0.5, "{:.3f}×"),
    ("checkout closed loop: goodput shipped ≥ 0.95× adaptive=false at 16, 64 and 256 connections",
     lambda s: min(l["goodput_ratio"] for l in s["checkout"]["closed_loops"]), lambda v: v >= 0.95, "{:.3f}× (lowest)"),
    ("checkout closed loop: no 503 at 16 and 64 connections",
     lambda s: sum(l["shipped"]["refused_503"] for l in s["checkout"]["closed_loops"] if l["connections"] <= 64), lambda v: v == 0, "{:.0f} refused"),
    ("mixed at 64 connections: no checkout refused", lambda s: s["mixed"]["checkouts_refused"], lambda v: v == 0, "{:.0f} refused"),
    ("checkout: zero oversell", lambda s: s["checkout"]["oversell_check"]["oversold"], lambda v: v is False, "oversold={}"),
    ("connections: 100% success", lambda s: s["connections"]["service"]["success_rate"], lambda v: v >= 1.0, "{:.4%}"),
    ("connections: p99 ≤ 50 ms on the held connections", lambda s: s["connections"]["service"]["held"]["p99_ms"], lambda v: v <= 50, "{:.2f} ms"),
    ("connections: p99 ≤ 50 ms over every request, the opening storm included", lambda s: s["connections"]["service"]["p99_ms"], lambda v: v <= 50, "{:.2f} ms"),
    ("connections: server RSS ≤ 300 MB", lambda s: s["connections"]["service"]["server"]["rss_max_bytes"] / 1e6, lambda v: v <= 300, "{:.0f} MB"),
    ("guardians: product with them on ≥ 0.9× with them off (limits in Redis)", lambda s: s["guardians"]["ratio_on_to_off"], lambda v: v >= 0.9, "{:.3f}×"),
    ("guardians: product with them on ≥ 0.9× with them off (limits in process)", lambda s: s["guardians"]["local_ratio_on_to_off"], lambda v: v >= 0.9, "{:.3f}×"),
    ("overload: goodput at 10× ≥ 80% of goodput at 1×", lambda s: s["overload"]["goodput_10x_to_1x"], lambda v: v is not None and v >= 0.8, "{:.3f}×"),
    ("overload: admitted p99 at 10× ≤ 2× its 1× value", lambda s: s["overload"]["admitted_p99_10x_to_1x"], lambda v: v is not None and v <= 2.0, "{:.2f}×"),
    ("overload: admitted p99 at 10× ≤ 2× its (lower) 1× value, as the service measured it", lambda s: s["overload"]["admitted_server_p99_10x_to_1x"], lambda v: v is not None and v <= 2.0, "{:.2f}×"),
    ("overload: every refusal answered within 5 ms (server histogram)",
     lambda s: min([l["server_refusals_within_5ms"] for l in s["overload"]["levels"] if l["server_refusals_within_5ms"] is not None] or [1.0]),
     lambda v: v >= 1.0, "{:.4%}"),
    ("overload: goodput back at 1× after 10× ≥ 0.9× the first 1×", lambda s: s["overload"]["recovered_goodput_to_1x"], lambda v: v is not None and v >= 0.9, "{:.3f}×"),
    ("soak: RSS growth ≤ 5% after warm-up", lambda s: s["soak"]["rss_growth_after_warmup"], lambda v: v is not None and v <= 0.05, "{:.2%}"),
    ("soak: p99 drift ≤ 20%", lambda s: s["soak"]["p99_drift"], lambda v: v is not None and v <= 0.20, "{:+.1%}"),
    ("soak: zero errors", lambda s: s["soak"]["errors"], lambda v: v == 0, "{}"),
]


def rows(results):
    """(scenario, target, rps, p50, p99, errors) for every measured run."""
    out = []
    for name, sc in results["scenarios"].items():
        for target, r in sc.items():
            if isinstance(r, dict) and "rps" in r:
                out.append((name, target, r["rps"], r.get("p50_ms"), r.get("p99_ms"), r.get("errors")))
        for target, rs in (sc.get("runs") or {}).items() if isinstance(sc, dict) else []:
            # A list of turns, or (telemetry) a list of turns per workload.
            groups = rs.items() if isinstance(rs, dict) else [(None, rs)]
            for kind, turns in groups:
                if not isinstance(turns, list):
                    continue
                label = f"{kind}, {target}" if kind else target
                for i, r in enumerate(turns):
                    out.append((name, f"{label} (turn {i + 1})", r["rps"], r.get("p50_ms"), r.get("p99_ms"), r.get("errors")))
        for key in ("phases", "steps", "windows", "levels"):
            for i, r in enumerate(sc.get(key, []) if isinstance(sc, dict) else []):
                label = r.get("phase") or (f"{r['factor']}× capacity, {r['offered_rps']}/s offered" if "factor" in r
                                           else f"{r['offered_rps']}/s offered" if "offered_rps" in r else f"window {i}")
                out.append((name, label, r.get("rps"), r.get("p50_ms"), r.get("p99_ms") or r.get("product_p99_ms"), r.get("errors")))
    return out


def bar_chart(title, items, unit, path, series=None):
    """Horizontal bars; `series` gives several values per label (e.g. p50 and p99)."""
    series = series or [("", "#3b6ea5")]
    height = 40 + 22 * len(items) * len(series) + 10 * len(items)
    width, left = 860, 300
    values = [v for _, vs in items for v in vs if v is not None]
    top = max(values) if values else 1
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="15" font-weight="bold">{title}</text>']
    y = 36
    for label, vs in items:
        svg.append(f'<text x="10" y="{y + 14}">{label}</text>')
        for (name, color), v in zip(series, vs):
            w = 0 if v is None else (width - left - 120) * v / top
            svg.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="18" fill="{color}"/>')
            text = "n/a" if v is None else f"{v:,.1f} {unit} {name}".strip()
            svg.append(f'<text x="{left + w + 6:.1f}" y="{y + 14}">{text}</text>')
            y += 22
        y += 10
    svg.append("</svg>")
    path.write_text("\n".join(svg))


def normalise(r):
    """oha counts requests still in flight when a run ends as errors; they are cut off, not failed."""
    if isinstance(r, dict) and r.get("tool") == "oha":
        cut = r.get("error_detail", {}).get("aborted due to deadline", 0)
        if cut and r.get("errors", 0) >= cut and sum(r.get("status_codes", {}).values()) + r["errors"] == r.get("requests"):
            r["errors"] -= cut
            r["requests"] -= cut
            r["success_rate"] = round(r["ok"] / r["requests"], 5) if r["requests"] else 0.0
    return r


def walk(node):
    if isinstance(node, dict):
        normalise(node)
        for v in node.values():
            walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)


def main(outdir):
    out = Path(outdir)
    results = json.loads((out / "results.json").read_text())
    walk(results)
    scen = results["scenarios"]
    table = rows(results)
    lines = [f"# Rampart benchmark run {out.name}", "",
             f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, {results['machine']['memory_gib']} GiB; "
             f"{results['machine']['note']}. Closed-loop runs of {results['duration_s']} s; product body "
             f"{results.get('product_body_bytes', '?')} bytes.", "", "## Goals", "", "| goal | figure | met |", "| --- | --- | --- |"]
    for label, get, ok, fmt in GOALS:
        try:
            v = get(scen)
            lines.append(f"| {label} | {fmt.format(v)} | {'met' if ok(v) else '**not met**'} |")
        except (KeyError, TypeError, ZeroDivisionError):
            lines.append(f"| {label} | not run | – |")
    lines += ["", "## Runs", "", "| scenario | target | req/s | p50 ms | p99 ms | errors |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, target, rps, p50, p99, errors in table:
        f = lambda v: "" if v is None else (f"{v:,.2f}" if isinstance(v, float) else f"{v}")
        lines.append(f"| {name} | {target} | {f(rps)} | {f(p50)} | {f(p99)} | {f(errors)} |")
    for name in ("checkout", "mixed", "soak"):
        if name in scen and "oversell_check" in scen[name]:
            lines += ["", f"Oversell check after `{name}`: `{json.dumps(scen[name]['oversell_check'])}`"]
    if "ramp" in scen:
        lines += ["", f"Ramp: closed-loop peak {scen['ramp']['closed_loop_peak_rps']} req/s; knee (first offered rate not "
                      f"met within 5%): {scen['ramp']['knee_offered_rps']}"]
    servers = [(n, t, r["server"]) for n, sc in scen.items() for t, r in sc.items() if isinstance(r, dict) and r.get("server")]
    if servers:
        lines += ["", "## Server resources during each run", "", "| scenario | target | RSS max MB | CPU cores (mean) |", "| --- | --- | ---: | ---: |"]
        for n, t, s in servers:
            lines.append(f"| {n} | {t} | {s['rss_max_bytes'] / 1e6:.1f} | {s['cpu_cores_mean']} |")
    lines += ["", "Charts: `throughput.svg`, `latency.svg`.", ""]
    (out / "report.md").write_text("\n".join(lines))
    labelled = [(f"{n} · {t}", r, p50, p99) for n, t, r, p50, p99, _ in table if r is not None]
    bar_chart("Throughput (req/s)", [(l, [r]) for l, r, _, _ in labelled], "req/s", out / "throughput.svg")
    bar_chart("Latency (ms): p50 and p99", [(l, [p50, p99]) for l, _, p50, p99 in labelled], "ms", out / "latency.svg",
              series=[("p50", "#7fb3d5"), ("p99", "#c0392b")])


if __name__ == "__main__":
    main(sys.argv[1])
