"""Render synthetic document pages (title, paragraphs, a photo with caption, a table with
caption) with OpenCV, to calibrate and check the PicoDet layout detector without a dataset.

    python examples/decoders/render_pages.py OUT_DIR --count 24 [--photos examples/data/eval]

Each page varies its layout with the seed; the figure is a real photo from --photos. Returns
(and, as a script, writes) pages in BGR, A4 proportions (1240 x 1754).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
WORDS = ("the", "model", "quantization", "preserves", "detection", "accuracy", "when", "the",
         "head", "tail", "stays", "in", "float", "while", "the", "body", "runs", "int8", "on",
         "every", "target", "edge", "device", "camera", "layout", "page", "table", "figure",
         "results", "latency", "memory", "bundle", "decoder", "stride", "anchor", "box", "score")
W, H = 1240, 1754


def render_page(seed: int, photo: np.ndarray | None) -> np.ndarray:
    """One page; the same seed and photo give the same pixels."""
    rng = random.Random(seed)
    page = np.full((H, W, 3), 255 - rng.randint(0, 12), np.uint8)
    ink = (rng.randint(0, 40),) * 3
    margin = rng.randint(80, 130)
    scale = rng.uniform(0.7, 0.9)
    line = int(48 * scale)

    def paragraph(y: int, lines: int) -> int:
        for i in range(lines):
            text, limit = "", (W - 2 * margin) * (0.6 if i == lines - 1 else 1.0)
            while True:
                word = rng.choice(WORDS)
                if cv2.getTextSize(f"{text} {word}", FONT, scale, 2)[0][0] > limit:
                    break
                text = f"{text} {word}"
            cv2.putText(page, text.strip(), (margin, y + i * line), FONT, scale, ink, 2,
                        cv2.LINE_AA)
        return y + lines * line

    title = " ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(3, 5)))
    size = rng.uniform(1.5, 1.9)
    tw = cv2.getTextSize(title, FONT, size, 4)[0][0]
    cv2.putText(page, title, (max(margin, (W - tw) // 2), 140), FONT, size, ink, 4, cv2.LINE_AA)
    y = paragraph(240, rng.randint(4, 7)) + 40
    blocks = ["figure", "table"]
    rng.shuffle(blocks)
    for block in blocks:
        if block == "figure" and photo is not None:
            fw = rng.randint(560, 760)
            fh = int(fw * photo.shape[0] / photo.shape[1])
            fh = min(fh, 480)
            x0 = (W - fw) // 2
            page[y:y + fh, x0:x0 + fw] = cv2.resize(photo, (fw, fh))
            y += fh + 45
            cv2.putText(page, f"Figure {seed % 9 + 1}. " + " ".join(rng.sample(WORDS, 4)) + ".",
                        (x0 + 40, y), FONT, scale, ink, 2, cv2.LINE_AA)
            y += 70
        else:
            cv2.putText(page, f"Table {seed % 7 + 1}. " + " ".join(rng.sample(WORDS, 4)) + ".",
                        (margin + 150, y), FONT, scale, ink, 2, cv2.LINE_AA)
            y += 30
            rows, cols = rng.randint(4, 6), rng.randint(3, 5)
            cw, rh, x0 = (W - 2 * margin - 100) // cols, 48, margin + 50
            for r in range(rows + 1):
                cv2.line(page, (x0, y + r * rh), (x0 + cols * cw, y + r * rh), ink, 2)
            for c in range(cols + 1):
                cv2.line(page, (x0 + c * cw, y), (x0 + c * cw, y + rows * rh), ink, 2)
            for r in range(rows):
                for c in range(cols):
                    cell = rng.choice(WORDS)[:8] if r == 0 or c == 0 else f"0.{rng.randint(10, 99)}"
                    cv2.putText(page, cell, (x0 + c * cw + 20, y + r * rh + 33), FONT, scale,
                                ink, 2, cv2.LINE_AA)
            y += rows * rh + 60
        if y > H - 300:
            break
        y = paragraph(y, rng.randint(2, 4)) + 40
        if y > H - 200:
            break
    return page


def render_pages(out: Path, count: int, photos: list[Path], start: int = 0) -> list[Path]:
    """Write pages `start` .. `start + count - 1` as PNG files; photo k % len(photos) each."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(start, start + count):
        photo = cv2.imread(str(photos[k % len(photos)])) if photos else None
        path = out / f"page_{k:03d}.png"
        cv2.imwrite(str(path), render_page(k, photo))
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--photos", type=Path, default=Path(__file__).parents[1] / "data" / "eval")
    args = p.parse_args()
    photos = sorted(q for q in args.photos.iterdir() if q.suffix.lower() in (".jpg", ".png"))
    for path in render_pages(args.out, args.count, photos, args.start):
        print(path)


if __name__ == "__main__":
    main()
