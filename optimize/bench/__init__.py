"""`edge-opt bench`: compare bundles of one model on labelled (or unlabelled) data.

    dataset.py   read the data: class folders, YOLO txt or COCO json boxes, or bare images
    worker.py    one bundle measured in its own process (latency, pre/post, outputs, peak RSS)
    memory.py    peak RSS of that process, and the launcher
    accuracy.py  top-1/top-5, mAP (pycocotools), agreement with the FP32 model
    runner.py    builds or finds the bundles and puts the numbers together
    report.py    report.md / report.json;  html.py + charts.py: a self-contained report.html

Kept free of heavy imports: `python -m optimize.bench.worker` imports this package, and the
worker's peak memory should be the runtime's, not the toolchain's.
"""
