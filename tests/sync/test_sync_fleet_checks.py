"""`edge-fleet` refuses before acting: bundles changed after signing (pack, deploy: nothing
published), numeric flags out of range (argparse, exit 2, the flag named) and devices that are
not one topic level ('+', 'cam#': one line, not paho's traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_sdk.hashing import sha256_file
from sync import fleet
from tests.fleet.fleet_helpers import make_keys, retained_topics, signed_bundle

NO_BROKER = "mqtt://127.0.0.1:1"  # nothing listens: reaching for it would say "refused"


def edge_fleet(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """`edge-fleet ARGV` in this process; argparse's exit becomes the return code."""
    try:
        code = fleet.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def signed(tmp_path: Path) -> Path:
    private, _ = make_keys(tmp_path / "keys")
    return signed_bundle(tmp_path / "v2", private, 2)


def tamper_model(bundle: Path) -> None:
    """The model changed after `edge-opt sign`: its sha256 no longer matches manifest.json."""
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")


def tamper_manifest_too(bundle: Path) -> None:
    """Model changed and manifest.json's hash fixed up: only the signature still tells."""
    tamper_model(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model"]["sha256"] = sha256_file(bundle / "model.onnx")
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def assert_one_line(err: str, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-fleet: "), err
    for text in expected:
        assert text in lines[0], err


def test_pack_refuses_a_bundle_changed_after_signing(tmp_path: Path, capsys) -> None:
    bundle = signed(tmp_path)
    out = tmp_path / "v2.tar"
    assert edge_fleet(capsys, "pack", str(bundle), str(out))[0] == 0  # the signed bundle packs
    out.unlink()
    tamper_model(bundle)
    code, stdout, err = edge_fleet(capsys, "pack", str(bundle), str(out))
    assert code == 2 and not stdout
    assert_one_line(err, "model.onnx", "does not match the sha256", "re-export", "sign it again")
    assert not out.exists()


def test_pack_refuses_a_manifest_changed_after_signing(tmp_path: Path, capsys) -> None:
    bundle = signed(tmp_path)
    tamper_manifest_too(bundle)
    out = tmp_path / "v2.tar"
    code, _, err = edge_fleet(capsys, "pack", str(bundle), str(out))
    assert code == 2
    assert_one_line(err, "manifest.json changed after the bundle was signed", "sign it again")
    assert not out.exists()


def test_deploy_refuses_a_changed_bundle_before_connecting(tmp_path: Path, capsys) -> None:
    """No broker listens: the refusal is the bundle's, so it came before any connection."""
    for tamper, expected in ((tamper_model, "model.onnx"),
                             (tamper_manifest_too, "manifest.json changed")):
        bundle = signed(tmp_path / tamper.__name__)
        tamper(bundle)
        state = tmp_path / tamper.__name__ / "r.json"
        code, out, err = edge_fleet(capsys, "--broker", NO_BROKER, "deploy", str(bundle),
                                    "--device", "cam-99", "--state", str(state))
        assert code == 2 and not out
        assert_one_line(err, expected, "sign it again")
        assert "refused" not in err and not state.exists()


def test_deploy_of_a_changed_bundle_publishes_nothing(tmp_path: Path, capsys, broker) -> None:
    private, _ = make_keys(tmp_path / "keys")
    bundle = signed_bundle(tmp_path / "v2", private, 2)
    state = str(tmp_path / "r.json")
    tamper_model(bundle)
    code, out, err = edge_fleet(capsys, "--broker", broker.url, "deploy", str(bundle),
                                "--device", "cam-99", "--state", state)
    assert code == 2 and "publishing" not in out
    assert_one_line(err, "model.onnx", "does not match the sha256")
    assert retained_topics(broker.port) == []
    # the probe sees what a deploy leaves: the re-signed bundle's chunks and its deployment
    signed_bundle(bundle, private, 3)
    code, out, err = edge_fleet(capsys, "--broker", broker.url, "deploy", str(bundle),
                                "--device", "cam-99", "--state", state)
    assert code == 0, err
    topics = retained_topics(broker.port)
    assert any("/_blobs/" in t for t in topics) and "edge/default/cam-99/deploy" in topics


BAD_FLAGS = [
    (["--connect-timeout", "-1", "devices"], "--connect-timeout"),
    (["devices", "--connect-timeout", "0"], "--connect-timeout"),
    (["devices", "--wait", "-1"], "--wait"),
    (["devices", "--wait", "1e999"], "--wait"),
    (["tail", "cam-01", "--count", "0"], "--count"),
    (["tail", "cam-01", "--count", "-3"], "--count"),
    (["tail", "all", "--duration", "-1"], "--duration"),
    (["tail", "all", "--duration", "inf"], "--duration"),
    (["send", "cam-01", "ping", "--timeout", "-5"], "--timeout"),
    (["send", "cam-01", "ping", "--timeout", "nan"], "--timeout"),
    (["rollouts", "--wait", "-1"], "--wait"),
    (["deploy", "B", "--device", "cam", "--wait", "--timeout", "0"], "--timeout"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_numeric_flags_out_of_range_are_usage_errors(argv: list[str], flag: str,
                                                     capsys) -> None:
    code, out, err = edge_fleet(capsys, "--broker", NO_BROKER, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and not out
    assert len(lines) == 2 and lines[0].startswith("usage: edge-fleet"), err
    assert lines[1].startswith("edge-fleet") and f"argument {flag}: must be" in lines[1], err


def test_deploy_counts_and_ratios_out_of_range_are_refused(tmp_path: Path, capsys) -> None:
    """Checked after parsing (with the bundle), still one line, still before connecting."""
    bundle = signed(tmp_path)
    for flags, expected in ((["--canary", "-1"], "--canary"),
                            (["--max-failures", "-1"], "--max-failures"),
                            (["--gate-frames", "0"], "--gate-frames"),
                            (["--min-speed-ratio", "nan"], "--min-speed-ratio"),
                            (["--gate-timeout", "-2"], "--gate-timeout")):
        code, out, err = edge_fleet(capsys, "--broker", NO_BROKER, "deploy", str(bundle),
                                    "--device", "cam", *flags, "--state",
                                    str(tmp_path / "r.json"))
        assert code == 2 and not out
        assert_one_line(err, expected)


BAD_NAMES = [
    (["send", "+", "ping"], "DEVICE '+'"),
    (["send", "cam#", "ping"], "DEVICE 'cam#'"),
    (["send", "cam/01", "ping"], "DEVICE 'cam/01'"),
    (["send", "cam-01\n", "ping"], "DEVICE 'cam-01\\n'"),
    (["tail", "cam#"], "or 'all' for every device"),
    (["tail", "+", "--count", "1"], "DEVICE '+'"),
    (["tail", "all", "--share", "a+b"], "--share 'a+b'"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_NAMES,
                         ids=[" ".join(a) for a, _ in BAD_NAMES])
def test_a_device_that_is_not_one_topic_level_is_a_usage_error(argv: list[str], expected: str,
                                                                 capsys) -> None:
    """Said before connecting (paho would raise ValueError on '+' or '#': a traceback)."""
    code, out, err = edge_fleet(capsys, "--broker", NO_BROKER, *argv)
    assert code == 2 and not out
    assert_one_line(err, expected, "letters, digits")
