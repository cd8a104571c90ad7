"""report.html: one file that opens offline, anywhere: inline CSS, charts as data: URIs, no
scripts, fonts or styles fetched from the network."""

from __future__ import annotations

import base64
import html

from optimize.bench import charts, report
from optimize.bench.report import cells

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1180px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.meta { color: #555; }
table { border-collapse: collapse; font-size: 13px; margin-top: 8px; }
th, td { padding: 4px 9px; border-bottom: 1px solid #ddd; white-space: nowrap; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ref td:first-child { font-weight: 600; }
tr.pareto { background: #eef6ee; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
          gap: 18px; }
figure { margin: 0; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 12px; margin-top: 4px; }
li { margin-bottom: 4px; }
"""


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(rows: list[dict]) -> str:
    head, body = cells(rows)
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for r, row_cells in zip(rows, body):
        cls = " ".join(c for c, on in (("ref", r["reference"]), ("pareto", r.get("pareto")))
                       if on)
        tds = "".join(f'<td{"" if i < 3 else " class=num"}>{html.escape(c)}</td>'
                      for i, c in enumerate(row_cells))
        out.append(f'<tr class="{cls}">{tds}</tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def render(result, generated: str) -> str:
    """The whole page as a string (about 100-300 KB, most of it the four PNG charts)."""
    rows = result.rows
    metric_name = report.metric_name(rows)
    front = [r["name"] for r in rows if r.get("pareto")]
    figures = [
        _img(charts.tradeoff_chart(rows, metric_name), "accuracy vs latency chart",
             f"{metric_name} against model latency (p50); circled points and the dashed line "
             "are the Pareto front."),
        _img(charts.latency_chart(rows), "latency chart",
             "Model p50 (coloured) + pre/post-processing p50 (hatched); | = p95, x = p99."),
        _img(charts.size_chart(rows), "size chart", "Model file size (labels excluded)."),
        _img(charts.memory_chart(rows), "memory chart",
             "Peak resident memory of the process running the bundle; | = before loading it."),
    ]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    summary = (f"{len(rows)} bundle(s) on {html.escape(result.dataset.describe())}. "
               f"Pareto front ({html.escape(metric_name)} vs latency): "
               f"{html.escape(', '.join(front) or 'none')}.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge-opt bench report</title><style>{STYLE}</style></head>
<body>
<h1>edge-opt bench report</h1>
<p class="meta">Generated {html.escape(generated)}. {summary}</p>
{_table(rows)}
<h2>Charts</h2>
<div class="charts">
{chr(10).join(figures)}
</div>
<h2>How to read it</h2>
<ul>{notes}</ul>
</body></html>
"""
