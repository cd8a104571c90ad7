"""`edge-opt profiles [show NAME]`: what each device runs, and every valid target."""

from __future__ import annotations

import argparse

from device_profiles import PRECISIONS, load_profiles, resolve_profile


def add_parser(sub) -> None:
    p = sub.add_parser(
        "profiles",
        help="list device profiles and targets, or show one profile",
        description="List every device profile with its precisions and default formats, or "
                    "print one profile in full.",
        epilog="examples:\n  edge-opt profiles\n  edge-opt profiles show jetson\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", help="profile name or alias (for `show`)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.action == "show":
        if not args.name:
            print("usage: edge-opt profiles show NAME   (e.g. edge-opt profiles show rpi5)")
            return 2
        print(describe(resolve_profile(args.name)))
        return 0
    print(table())
    return 0


def table() -> str:
    rows = [("profile", "aliases", "accelerator", "runtime", "precisions (default format)",
             "threads", "memory")]
    for p in load_profiles().values():
        precisions = " ".join(f"{k}({v['format']})" for k, v in p.precisions.items())
        if p.unsupported:
            precisions += "  no: " + ",".join(p.unsupported)
        rows.append((p.name, ",".join(p.aliases) or "-", p.accelerator.split(",")[0],
                     "+".join(p.backends()),
                     precisions, str(p.threads), f"{p.memory_budget_mb} MB"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    targets = [f"{p.name}-{x}" for p in load_profiles().values() for x in PRECISIONS
               if x in p.precisions]
    lines += ["", "Targets (--target PROFILE-PRECISION; aliases work too, e.g. jetson-int8):",
              _wrap(targets)]
    return "\n".join(lines)


def _wrap(words: list[str], width: int = 96) -> str:
    lines, line = [], "  "
    for w in words:
        if len(line) + len(w) + 1 > width:
            lines.append(line.rstrip())
            line = "  "
        line += w + " "
    lines.append(line.rstrip())
    return "\n".join(lines)


def describe(p) -> str:
    lines = [f"{p.name}: {p.description}"]
    if p.aliases:
        lines.append(f"  aliases:      {', '.join(p.aliases)}")
    lines += [
        f"  cpu:          {p.cpu} ({p.cpu_arch})",
        f"  accelerator:  {p.accelerator}",
        f"  formats:      {', '.join(p.formats)}",
        f"  runtime:      {' + '.join(p.backends())}; onnxruntime providers "
        f"{' > '.join(p.execution_providers)}",
        f"  threads:      {p.threads}",
        f"  memory:       {p.memory_budget_mb} MB budget for the model",
        f"  max drop:     {p.max_drop} point(s) top-1 for quantized exports",
        "  precisions:",
    ]
    for precision, spec in p.precisions.items():
        lines.append(f"    {precision:5} -> {spec['format']} (default)")
        for fmt in spec.get("schemes", {}):
            scheme = p.scheme(precision, fmt)
            lines.append(f"            {fmt}: scheme {scheme['name']}: {scheme['description']}")
    for precision, why in p.unsupported.items():
        lines.append(f"    {precision:5} -> not supported: {why.reason} (use {why.instead})")
    return "\n".join(lines)
