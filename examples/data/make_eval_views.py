"""Make extra held-out views (4 corner crops at 80 % and a mirror) of each evaluation photo.

Top-1 agreement on ~17 photos moves in steps of 6 %; five more views per photo give a finer,
still honest measure (every view is a real, different input; none is used for calibration).
Run once; the outputs are committed under eval/views/.
"""

from pathlib import Path

import cv2

HERE = Path(__file__).parent
out = HERE / "eval" / "views"
out.mkdir(exist_ok=True)
for path in sorted((HERE / "eval").glob("*.jpg")):
    image = cv2.imread(str(path))
    s = 384 / min(image.shape[:2])
    if s < 1:
        image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    h, w = image.shape[:2]
    ch, cw = int(h * 0.8), int(w * 0.8)
    views = {
        "tl": image[:ch, :cw], "tr": image[:ch, w - cw:],
        "bl": image[h - ch:, :cw], "br": image[h - ch:, w - cw:],
        "flip": cv2.flip(image, 1),
    }
    for name, view in views.items():
        cv2.imwrite(str(out / f"{path.stem}_{name}.jpg"), view, [cv2.IMWRITE_JPEG_QUALITY, 85])
