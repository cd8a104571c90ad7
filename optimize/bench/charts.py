"""The report's charts as PNG bytes (matplotlib, Agg; no display, no pyplot global state).

PNG rather than SVG so report.html embeds them as data: URIs that any browser shows offline,
and so the page contains no namespace or DTD URLs that look like downloads.
"""

from __future__ import annotations

import io

from optimize.bench.pareto import front_order

PRECISION_COLORS = {"fp32": "#4c72b0", "fp16": "#55a868", "int8": "#dd8452", "int4": "#c44e52"}
OTHER_COLOR = "#8172b3"
DPI = 110


def _color(row: dict) -> str:
    return PRECISION_COLORS.get(row["precision"], OTHER_COLOR)


def _figure(height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, height), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _precision_legend(ax, rows: list[dict], marker: str) -> None:
    """Legend entries for the colours: one per precision present."""
    for precision, color in PRECISION_COLORS.items():
        if any(r["precision"] == precision for r in rows):
            ax.scatter([], [], color=color, marker=marker, label=precision)


def _legend(fig) -> None:
    """Below the plot, where it cannot hide a bar or a point."""
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=7,
               frameon=False)


def _bar_height(rows: list[dict]) -> float:
    return 1.5 + 0.42 * len(rows)


def size_chart(rows: list[dict]) -> bytes:
    fig, ax = _figure(_bar_height(rows))
    names = [r["name"] for r in rows]
    values = [r["size_bytes"] / 1e6 for r in rows]
    bars = ax.barh(names, values, color=[_color(r) for r in rows])
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
    _precision_legend(ax, rows, "s")
    _legend(fig)
    ax.invert_yaxis()
    ax.set_xlabel("model files, MB")
    ax.set_title("Size", loc="left", fontsize=11)
    ax.margins(x=0.15)
    return _png(fig)


def latency_chart(rows: list[dict]) -> bytes:
    """Model p50 with p95/p99 marks, and pre+post processing stacked after it."""
    fig, ax = _figure(_bar_height(rows))
    names = [r["name"] for r in rows]
    p50 = [r["latency_ms_p50"] for r in rows]
    ax.barh(names, p50, color=[_color(r) for r in rows])
    ax.barh(names, [r["prepost_ms_p50"] for r in rows], left=p50, color="#cccccc",
            hatch="//", edgecolor="#999999", label="pre+post processing p50")
    ax.scatter([r["latency_ms_p95"] for r in rows], names, marker="|", s=160, color="black",
               label="model p95", zorder=3)
    ax.scatter([r["latency_ms_p99"] for r in rows], names, marker="x", s=30, color="black",
               label="model p99", zorder=3)
    _precision_legend(ax, rows, "s")
    ax.invert_yaxis()
    ax.set_xlabel("model p50 (Model.infer) + pre/post processing, ms per image at batch 1")
    ax.set_title("Latency", loc="left", fontsize=11)
    _legend(fig)
    return _png(fig)


def memory_chart(rows: list[dict]) -> bytes:
    fig, ax = _figure(_bar_height(rows))
    names = [r["name"] for r in rows]
    peak = [r["peak_rss_bytes"] / 1e6 for r in rows]
    bars = ax.barh(names, peak, color=[_color(r) for r in rows])
    base = [(r.get("rss_baseline_bytes") or 0) / 1e6 for r in rows]
    ax.scatter(base, names, marker="|", s=160, color="black", zorder=3,
               label="before loading the bundle")
    ax.bar_label(bars, fmt="%.0f", padding=3, fontsize=8)
    _precision_legend(ax, rows, "s")
    ax.invert_yaxis()
    ax.set_xlabel("peak resident memory (VmHWM) of the process, MB")
    ax.set_title("Peak memory", loc="left", fontsize=11)
    _legend(fig)
    ax.margins(x=0.12)
    return _png(fig)


def tradeoff_chart(rows: list[dict], metric_name: str) -> bytes:
    """Accuracy against model latency, the Pareto front drawn as a line through its points."""
    fig, ax = _figure(4.2)
    points = [(r["latency_ms_p50"], r["accuracy"]) if r.get("accuracy") is not None else None
              for r in rows]
    shown = [(r, p) for r, p in zip(rows, points) if p is not None]
    if not shown:
        ax.text(0.5, 0.5, "no accuracy measured", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    front = front_order(points)
    fx, fy = [points[i][0] for i in front], [points[i][1] for i in front]
    ax.step(fx, fy, where="post", color="#333333", linewidth=1.2, linestyle="--",
            label="Pareto front")
    xs, ys = [p[0] for _, p in shown], [p[1] for _, p in shown]
    near_x = 0.15 * ((max(xs) - min(xs)) or 1.0)  # about a label's width
    near_y = 0.03 * ((max(ys) - min(ys)) or 1.0)
    placed: list[tuple[float, float]] = []
    for r, (x, y) in sorted(shown, key=lambda rp: rp[1][0]):
        on = r.get("pareto")
        ax.scatter([x], [y], s=90 if on else 45, color=_color(r), zorder=3,
                   edgecolors="black" if on else "none", linewidths=1.2)
        # labels that would overlap a neighbour's go one line lower
        k = sum(abs(x - px) < near_x and abs(y - py) < near_y for px, py in placed)
        placed.append((x, y))
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, 5 - 11 * k),
                    fontsize=8)
    _precision_legend(ax, [r for r, _ in shown], "o")
    ax.set_xlabel("model latency p50, ms (lower is better)")
    ax.set_ylabel(f"{metric_name} (higher is better)")
    ax.set_title("Accuracy vs latency", loc="left", fontsize=11)
    ax.grid(alpha=0.3)
    ax.margins(x=0.2, y=0.15)
    _legend(fig)
    return _png(fig)
