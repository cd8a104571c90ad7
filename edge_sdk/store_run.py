"""`edge-run --store DIR --source SRC --mqtt URL --device-id ID`: a fleet device.

Runs the active bundle of a model store (edge_sdk/store.py) and takes new ones from the fleet
(edge_sdk/deploy_agent.py) without stopping the camera. `--seed BUNDLE` puts a first bundle
into an empty store. `--loop-fps F` plays a file or folder source forever at F frames/s, like
a camera (simulated devices, benchmarks).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge_sdk.cli import load_saying_so
from edge_sdk.errors import EdgeError
from edge_sdk.hotswap import SwappableModel
from edge_sdk.manifest import Manifest
from edge_sdk.native_quiet import set_quiet
from edge_sdk.sources import Source
from edge_sdk.sources.readers import reader_for
from edge_sdk.store import Store
from edge_sdk.trust import read_identity, verify_bundle


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-run --store",
        description="Run the active model of a store and take new models from the fleet.",
        epilog="example:\n  edge-run --store /var/lib/edge/models --seed first-bundle/ "
               "--source 0 \\\n      --mqtt mqtt://broker:1883 --device-id cam-01 --trust "
               "fleet.pub --group lobby-cams\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", type=Path, required=True, metavar="DIR", help="model store folder")
    p.add_argument("--source", required=True, action="append",
                   help="camera index, video file, folder, URL (one: a store runs one camera)")
    p.add_argument("--mqtt", required=True, metavar="URL", help="the fleet's broker")
    p.add_argument("--device-id", required=True, help="this device's id on MQTT")
    p.add_argument("--trust", type=Path, metavar="KEY.pub",
                   help="accept only bundles signed by this key (edge-opt keygen)")
    p.add_argument("--group", action="append", default=[], metavar="G",
                   help="a group this device belongs to (repeatable)")
    p.add_argument("--seed", type=Path, metavar="BUNDLE",
                   help="install this bundle if the store is empty")
    p.add_argument("--outbox", type=Path, metavar="FILE", help="MQTT outbox file")
    p.add_argument("--config", metavar="FILE", help="sync settings (INI, [sync] section)")
    p.add_argument("--loop-fps", type=float, metavar="F",
                   help="play a file/folder source in a loop at F frames/s, like a camera")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--quiet", "-q", action="store_true")
    return p


class LoopingReader:
    """A file or folder reader that starts over at its end and paces itself like a camera."""

    live = True

    def __init__(self, spec: str, fps: float) -> None:
        self.spec, self.inner, self.interval = spec, reader_for(spec), 1.0 / fps
        self.name = self.inner.name
        self.fps = fps
        self._next = 0.0

    @property
    def current(self) -> str:
        return self.inner.current

    def open(self) -> None:
        self.inner.open()

    def read(self):
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + self.interval, time.monotonic())
        item = self.inner.read()
        if item is None:  # the end: start over with a fresh reader
            self.inner.close()
            self.inner = reader_for(self.spec)
            self.inner.open()
            item = self.inner.read()
        if item is None:
            return None
        return item[0], time.time()

    def close(self) -> None:
        self.inner.close()


def main(argv: list[str]) -> int:
    from sync.errors import SyncError

    if "-h" in argv or "--help" in argv:  # `edge-run --store --help`: --store has no DIR yet
        build_parser().print_help()
        return 0
    args = build_parser().parse_args(argv)
    if args.quiet:
        set_quiet()
    try:
        return _run(args)
    except (EdgeError, SyncError) as exc:  # user mistakes (--mqtt, --device-id, ...): one line
        print(f"edge-run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _seed(store: Store, bundle: Path, trust: Path | None, quiet: bool) -> None:
    """Put a first bundle into the store, once it is known to load here (a seed that does not
    load would be the store's only bundle: the device could neither run nor take an update)."""
    from edge_sdk.deploy_agent import unsigned_identity  # (imports the MQTT client)

    Manifest.read(bundle, verify=True)  # a wrong --seed is said in one line
    identity = (verify_bundle(bundle, trust) if trust is not None
                else read_identity(bundle) or unsigned_identity(bundle))
    load_saying_so(bundle, quiet, trust=trust)
    store.seed(bundle, identity)


def _run(args: argparse.Namespace) -> int:
    from edge_sdk.deploy_agent import DeployAgent
    from edge_sdk.pipeline import Pipeline
    from edge_sdk.sinks.mqtt import MqttSink
    from sync.config import load_config
    from sync.connection import make_ssl_context
    from sync.topics import is_name

    if len(args.source) > 1:
        raise EdgeError(f"--store runs one camera, got {len(args.source)} --source flags; "
                        "run one edge-run --store (with its own --store and --device-id) each")
    args.source = args.source[0]
    if args.loop_fps is not None and not 0 < args.loop_fps <= 1000:
        raise EdgeError(f"--loop-fps must be between 0 and 1000, got {args.loop_fps}")
    for group in args.group:
        if not is_name(group):
            raise EdgeError(f"--group {group!r}: use 1-64 letters, digits, '.', '_' or '-'")
    # --mqtt, --device-id and --config (its TLS files too) are said now, before the store is
    # touched
    cfg = load_config({"broker": args.mqtt, "device_id": args.device_id}, args.config)
    if cfg.address.tls:
        make_ssl_context(cfg)
    if args.trust is not None:
        from edge_sdk.trust import load_public_key

        load_public_key(args.trust)  # a wrong --trust is said now, not at the first deploy
    store = Store(args.store)
    store.recover()
    if store.active() is None:
        if args.seed is None:
            raise EdgeError(f"store {args.store} is empty: give a first bundle with --seed "
                            "BUNDLE")
        _seed(store, args.seed, args.trust, args.quiet)
    elif args.seed is not None:
        print(f"edge-run: warning: --seed {args.seed} ignored: store {args.store} already has "
              "an active bundle (--seed only fills an empty store; update it with "
              "`edge-fleet deploy`)", file=sys.stderr)
    record = store.active()
    try:
        model = load_saying_so(store.path(record.slot), args.quiet, trust=args.trust)
    except EdgeError as exc:
        back = store.rollback(f"active bundle does not load: {exc}")
        if back is not None and back.slot != record.slot:
            model = load_saying_so(store.path(back.slot), args.quiet, trust=args.trust)
        elif args.seed is not None:  # nothing to fall back on: the seed given replaces it
            print(f"edge-run: warning: the store's bundle does not load ({exc}); replacing it "
                  f"with --seed {args.seed}", file=sys.stderr)
            _seed(store, args.seed, args.trust, args.quiet)
            model = load_saying_so(store.path(store.active().slot), args.quiet, trust=args.trust)
        else:
            raise EdgeError(f"{exc} (the store {args.store} has no other bundle: pass a good "
                            "one with --seed BUNDLE)") from None
    if args.trust is None:
        print("edge-run: warning: no --trust KEY.pub: bundles from the fleet are installed "
              "without a signature check", file=sys.stderr)
    swappable = SwappableModel(model)
    from sync import MqttSync

    sync = MqttSync(broker=args.mqtt, device_id=args.device_id,
                    outbox=args.outbox or args.store / "outbox.db", config_file=args.config,
                    outbox_damaged="quarantine")
    reader = (reader_for(args.source) if args.loop_fps is None
              else LoopingReader(args.source, args.loop_fps))
    pipeline = Pipeline(Source(reader), swappable, sinks=[MqttSink(client=sync)],
                        max_frames=args.max_frames, sink_policy="drop")
    agent = DeployAgent(store, swappable, broker=args.mqtt, fleet=sync.config.fleet,
                        device=args.device_id, groups=tuple(args.group), trust=args.trust,
                        sync=sync, config_file=args.config)
    sync.start()
    agent.start()
    pipeline.start()
    try:
        while not pipeline.join(1.0):
            sync.update_telemetry(fps=round(pipeline.metrics().fps, 2))
    except KeyboardInterrupt:
        pipeline.stop()
    finally:
        agent.close()
        sync.close(drain_timeout=2.0)
    if pipeline.error is not None:
        print(f"edge-run: error: {pipeline.error}", file=sys.stderr)
        return 1
    return 0
