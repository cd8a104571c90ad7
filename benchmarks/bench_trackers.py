"""Tracker quality: MOTA, IDF1 and ID switches (motmetrics) of edge_sdk's trackers and of
roboflow's `trackers` package (SORT, ByteTrack, OC-SORT) on the same MOT-format ground truth
and the same detections.

No MOT-format dataset with ground truth installs offline here (none on PyPI or in Debian's
archive), so the ground truth is a synthetic street scene, written as MOT `gt.txt`: people
walk in from the edges at their own speed and heading, some turn, many cross; whoever is
mostly hidden behind a nearer person (lower on the image) is occluded. The detections
(`det.txt`) are the ground-truth boxes degraded with a fixed seed: occluded people missed,
random misses, jitter proportional to box size, scores, and clutter (false boxes at low
scores). Every tracker reads the same det.txt; motmetrics (the py-motmetrics package) scores
every output against gt.txt with IoU >= 0.5. Each tracker's cost is its CPU time in
`update()` per frame (one thread, the same detections; peers timed the same way in their own
process), the time a tracker takes from the inference thread for each camera. The peers run
in their own virtualenv (benchmarks/.peers-venv, `trackers` pinned below; it pulls its own
OpenCV build, which must not enter the project's environment) and write MOT-format results
that are scored the same way.

    python benchmarks/bench_trackers.py            # writes benchmarks/results/trackers.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_sdk.results import Detections  # noqa: E402
from edge_sdk.tracking import build_tracker  # noqa: E402
from edge_sdk.tracking.matching import box_iou  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PEERS_VENV = ROOT / "benchmarks" / ".peers-venv"
PEERS_PIN = "trackers==2.6.1"
W, H, FRAMES, PEOPLE = 1280, 720, 300, 40
OURS = {"edge_sdk bytetrack": ("bytetrack", False), "edge_sdk ocsort": ("ocsort", False),
        "edge_sdk bytetrack + smoothing": ("bytetrack", True),
        "edge_sdk ocsort + smoothing": ("ocsort", True)}  # fmt: skip
PEERS = {"trackers SORT": "SORTTracker", "trackers ByteTrack": "ByteTrackTracker",
         "trackers OC-SORT": "OCSORTTracker"}  # fmt: skip


def scene(seed: int) -> dict[int, list[tuple[int, np.ndarray]]]:
    """frame -> [(person id, xyxy)]: people enter from an edge, walk, maybe turn, leave."""
    rng = np.random.default_rng(seed)
    frames: dict[int, list[tuple[int, np.ndarray]]] = {f: [] for f in range(1, FRAMES + 1)}
    for pid in range(1, PEOPLE + 1):
        start = int(rng.integers(1, FRAMES - 40))
        h = float(rng.uniform(90, 220))
        w = h * rng.uniform(0.35, 0.45)
        left = rng.random() < 0.5
        x = -w + 1 if left else W - 1.0
        y = float(rng.uniform(0.25 * H, H - h))
        vx = rng.uniform(2.0, 7.0) * (1 if left else -1)
        vy = rng.uniform(-0.8, 0.8)
        turn = int(rng.integers(20, 120)) if rng.random() < 0.4 else -1
        for f in range(start, FRAMES + 1):
            age = f - start
            if age == turn:
                vx, vy = vx * rng.uniform(-0.3, 0.6), rng.choice([-1, 1]) * rng.uniform(1.5, 3.5)
            x, y = x + vx, y + vy
            box = np.array([x, y, x + w, y + h])
            if box[2] < 0 or box[0] > W or box[3] < 0 or box[1] > H:
                break
            frames[f].append((pid, box))
    return frames


def visible_fraction(box: np.ndarray, others: list[np.ndarray]) -> float:
    """Share of `box` not covered by nearer boxes (those whose feet are lower in the image)."""
    x1, y1, x2, y2 = box
    mask = np.ones((20, 20), bool)
    xs, ys = np.linspace(x1, x2, 20), np.linspace(y1, y2, 20)
    for o in others:
        if o[3] <= box[3]:
            continue
        mask &= ~(((xs >= o[0]) & (xs <= o[2]))[None, :] & ((ys >= o[1]) & (ys <= o[3]))[:, None])
    return float(mask.mean())


def degrade(truth: dict, seed: int) -> dict[int, np.ndarray]:
    """frame -> (N, 5) detections x1, y1, x2, y2, score."""
    rng = np.random.default_rng(seed + 1)
    out = {}
    for f, people in truth.items():
        rows = []
        boxes = [b for _, b in people]
        for i, (_, box) in enumerate(people):
            vis = visible_fraction(box, boxes[:i] + boxes[i + 1:])
            if vis < 0.4 or rng.random() < 0.08:
                continue
            h = box[3] - box[1]
            noisy = box + rng.normal(0, 0.04 * h, 4)
            score = float(np.clip(rng.normal(0.45 + 0.45 * vis, 0.1), 0.05, 0.99))
            rows.append([*noisy, score])
        for _ in range(rng.poisson(1.5)):  # clutter
            cx, cy, h = rng.uniform(0, W), rng.uniform(0.2 * H, H), rng.uniform(60, 200)
            rows.append([cx - 0.2 * h, cy - h / 2, cx + 0.2 * h, cy + h / 2,
                         float(rng.uniform(0.1, 0.55))])  # fmt: skip
        out[f] = np.array(rows, np.float64).reshape(-1, 5)
    return out


def write_mot(path: Path, rows: list[tuple]) -> None:
    """MOT challenge text: frame, id, left, top, width, height, conf, -1, -1, -1."""
    path.write_text("".join(f"{f},{i},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{c:.3f},"
                            "-1,-1,-1\n" for f, i, x1, y1, x2, y2, c in rows))  # fmt: skip


def read_mot(path: Path) -> dict[int, list[tuple[int, np.ndarray]]]:
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    for line in path.read_text().splitlines():
        v = line.split(",")
        f, i, x, y, w, h = int(v[0]), int(v[1]), *map(float, v[2:6])
        out.setdefault(f, []).append((i, np.array([x, y, x + w, y + h])))
    return out


def run_ours(name: str, smooth: bool, dets: dict[int, np.ndarray]) -> tuple[list[tuple], float]:
    """MOT rows, and CPU ms per frame spent in `update()`."""
    tracker = build_tracker(name, smooth=smooth)
    rows, spent = [], 0.0
    for f in sorted(dets):
        d = dets[f]
        frame = Detections(d[:, :4].astype(np.float32), d[:, 4].astype(np.float32),
                           np.zeros(len(d), np.int64))  # fmt: skip
        start = time.process_time()
        result = tracker.update(frame)
        spent += time.process_time() - start
        for box, tid, score in zip(result.xyxy, result.tracker_ids, result.scores):
            rows.append((f, int(tid), *map(float, box), float(score)))
    return rows, spent / max(len(dets), 1) * 1e3


PEER_SCRIPT = """
import sys, time, numpy as np, supervision as sv, trackers
det, out, cls = sys.argv[1], sys.argv[2], sys.argv[3]
rows = {}
for line in open(det):
    v = line.split(","); f = int(v[0]); x, y, w, h, c = map(float, v[2:7])
    rows.setdefault(f, []).append([x, y, x + w, y + h, c])
tracker = getattr(trackers, cls)()
last = max(rows) if rows else 0
spent = 0.0
with open(out, "w") as o:
    for f in range(1, last + 1):
        d = np.array(rows.get(f, []), float).reshape(-1, 5)
        dets = sv.Detections(xyxy=d[:, :4], confidence=d[:, 4], class_id=np.zeros(len(d), int))
        start = time.process_time()
        t = tracker.update(dets)
        spent += time.process_time() - start
        for (x1, y1, x2, y2), tid, c in zip(t.xyxy, t.tracker_id, t.confidence):
            if tid is not None and tid >= 0:
                o.write(f"{f},{int(tid)},{x1:.2f},{y1:.2f},{x2-x1:.2f},{y2-y1:.2f},{c:.3f},-1,-1,-1\\n")
print(spent / max(last, 1) * 1e3)
"""


_peers: Path | None = None


def peers_python() -> Path:
    """The peers' own virtualenv, created once with the pinned package."""
    if _peers is not None:
        return _peers
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", PEERS_PIN], check=True)
    return python


def run_peer(cls: str, det: Path, out: Path) -> float:
    """Runs the peer on det.txt into `out`; its CPU ms per frame in `update()`."""
    done = subprocess.run([str(peers_python()), "-c", PEER_SCRIPT, str(det), str(out), cls],
                          check=True, timeout=600, capture_output=True, text=True)  # fmt: skip
    return float(done.stdout.split()[-1])


def score(gt: dict, hyp: dict) -> dict:
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=False)
    for f in range(1, FRAMES + 1):
        g, h = gt.get(f, []), hyp.get(f, [])
        gb = np.array([b for _, b in g]).reshape(-1, 4)
        hb = np.array([b for _, b in h]).reshape(-1, 4)
        # motmetrics 1.4.0's iou_matrix calls np.asfarray, gone in NumPy 2: the same distance
        # (1 - IoU, NaN = may not match) from edge_sdk's IoU
        dist = 1.0 - box_iou(gb, hb)
        dist[dist > 0.5] = np.nan
        acc.update([i for i, _ in g], [i for i, _ in h], dist, frameid=f)
    summary = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches",
                                                        "precision", "recall"])  # fmt: skip
    row = summary.iloc[0]
    return {"MOTA": float(row["mota"]), "IDF1": float(row["idf1"]),
            "ID switches": int(row["num_switches"]), "precision": float(row["precision"]),
            "recall": float(row["recall"])}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--no-peers", action="store_true", help="only edge_sdk's trackers")
    p.add_argument("--peers-python", type=Path,
                   help=f"a Python with {PEERS_PIN} (default: made in {PEERS_VENV.name})")
    args = p.parse_args()
    global _peers
    _peers = args.peers_python
    load_before = [round(x, 2) for x in os.getloadavg()]
    tmp = Path(tempfile.mkdtemp(prefix="bench_trackers_"))
    per_seed: dict[str, list[dict]] = {}
    for seed in args.seeds:
        truth = scene(seed)
        folder = tmp / f"seq{seed}"
        folder.mkdir()
        write_mot(folder / "gt.txt", [(f, i, *b, 1.0) for f, ps in truth.items() for i, b in ps])
        dets = degrade(truth, seed)
        write_mot(folder / "det.txt", [(f, -1, *d) for f, ds in dets.items() for d in ds])
        gt = read_mot(folder / "gt.txt")
        outputs, cost = {}, {}
        for label, (name, smooth) in OURS.items():
            path = folder / f"{name}{'_smooth' if smooth else ''}.txt"
            rows, cost[label] = run_ours(name, smooth, dets)
            write_mot(path, rows)
            outputs[label] = path
        if not args.no_peers:
            for label, cls in PEERS.items():
                cost[label] = run_peer(cls, folder / "det.txt", folder / f"{cls}.txt")
                outputs[label] = folder / f"{cls}.txt"
        for label, path in outputs.items():
            scores = score(gt, read_mot(path))
            scores["CPU ms / frame"] = cost[label]
            per_seed.setdefault(label, []).append(scores)
        print(f"seed {seed}: {len(gt)} frames scored", file=sys.stderr)
    table = {label: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
             for label, rows in per_seed.items()}  # fmt: skip
    peers = [v for k, v in table.items() if k.startswith("trackers ")]
    ours = [v for k, v in table.items() if k.startswith("edge_sdk ")]
    goal = None
    if peers:
        goal = {m: max(o[m] for o in ours) >= max(q[m] for q in peers) for m in ("MOTA", "IDF1")}
    report = {"benchmark": "trackers", "ground_truth": "synthetic street scene (MOT format)",
              "seeds": args.seeds, "frames": FRAMES, "people": PEOPLE, "peers": PEERS_PIN,
              "evaluator": "motmetrics " + _version("motmetrics"), "iou_threshold": 0.5,
              "load_average_before_after": [load_before, [round(x, 2) for x in os.getloadavg()]],
              "mean_over_seeds": table, "ours_at_least_best_peer": goal}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trackers.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "trackers.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def markdown(r: dict) -> str:
    lines = ["# Tracker quality (`benchmarks/bench_trackers.py`)", "",
             f"Ground truth: {r['ground_truth']}, {r['frames']} frames, {r['people']} people per "
             f"sequence, seeds {r['seeds']} (no MOT-format dataset installs offline); the same "
             f"degraded detections for every tracker; scored by {r['evaluator']} at IoU >= "
             f"{r['iou_threshold']}; peers: {r['peers']}; every tracker at its defaults. "
             "Means over seeds. CPU ms / frame: time in `update()`, one thread; load average "
             f"before / after {r['load_average_before_after']}.", "",
             "| tracker | MOTA | IDF1 | ID switches | precision | recall | CPU ms / frame |",
             "| --- | --- | --- | --- | --- | --- | ---: |"]  # fmt: skip
    for label, m in r["mean_over_seeds"].items():
        lines.append(f"| {label} | {m['MOTA']:.3f} | {m['IDF1']:.3f} | {m['ID switches']:.1f} "
                     f"| {m['precision']:.3f} | {m['recall']:.3f} | {m['CPU ms / frame']:.3f} |")
    if r["ours_at_least_best_peer"] is not None:
        lines += ["", "Goal (ours >= the best peer): " + ", ".join(
            f"{k} {'PASS' if v else 'FAIL'}" for k, v in r["ours_at_least_best_peer"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
