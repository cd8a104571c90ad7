"""Device profiles: every shipped profile validates, targets resolve, mistakes are explained."""

from __future__ import annotations

import pytest

from device_profiles import (
    ProfileError,
    all_target_names,
    load_profile_file,
    load_profiles,
    resolve_target,
)
from tests.conftest import run_cli

REQUIRED = ["jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-nano", "rpi5",
            "rpi4", "x86", "x86-avx512"]


def test_every_required_profile_ships_and_validates():
    profiles = load_profiles()
    assert set(REQUIRED) <= set(profiles)
    for p in profiles.values():
        assert p.threads >= 1 and p.memory_budget_mb > 0
        for precision in ("int8", "int4"):
            if precision in p.precisions:
                assert p.scheme(precision) is not None


@pytest.mark.parametrize(("text", "name", "scheme"), [
    ("jetson-int8", "jetson-orin-nano-int8", "tensorrt"),
    ("jetson-orin-nx-fp16", "jetson-orin-nx-fp16", None),
    ("rpi-int8", "rpi5-int8", "litert-int8"),
    ("x86-int8", "x86-int8", "openvino-qdq"),
    ("x86-avx512-int4", "x86-avx512-int4", "nncf-int4"),
    ("X86-FP32", "x86-fp32", None),
])
def test_targets_resolve_through_aliases(text, name, scheme):
    target = resolve_target(text)
    assert target.name == name
    assert (target.scheme or {}).get("name") == scheme


@pytest.mark.parametrize(("text", "words"), [
    ("jetson-nano-int8", ["Maxwell", "jetson-nano-fp16"]),
    ("jetson-nano-int4", ["jetson-nano-fp16"]),
    ("jetsn-int8", ["did you mean", "jetson"]),
    ("x86-int3", ["did you mean", "x86-int"]),
    ("int8", ["PROFILE-PRECISION"]),
])
def test_bad_targets_say_what_to_use(text, words):
    with pytest.raises(ProfileError) as err:
        resolve_target(text)
    for word in words:
        assert word in str(err.value)


def test_every_listed_target_resolves():
    for name in all_target_names():
        assert resolve_target(name).precision in name


TINY = ("name: tiny\ndescription: d\ncpu_arch: x86_64\ncpu: c\naccelerator: none\n"
        "formats: [onnx]\nruntime:\n  execution_providers: [CPUExecutionProvider]\n"
        "memory_budget_mb: 64\nmax_drop: 1\n")


@pytest.mark.parametrize(("yaml_text", "words"), [
    ("name: x\nbogus: 1\n", ["Additional properties", "bogus"]),
    ("{{{", ["not valid YAML"]),
    (TINY + "threads: 0\nprecisions: {fp32: {format: onnx}}\n", ["threads", "minimum"]),
    (TINY + "threads: 1\nprecisions: {int8: {format: onnx, schemes: {onnx: nope}}}\n",
     ["scheme", "nope"]),
    (TINY + "threads: 1\nprecisions: {int8: {format: onnx}}\n", ["needs a scheme"]),
    (TINY + "threads: 1\nprecisions: {fp32: {format: openvino}}\n", ["not in its formats"]),
    (TINY + "threads: 1\nprecisions: {int8: {format: onnx, schemes: {onnx: ort-u8s8, "
            "tflite: litert-int8}}}\n", ["litert-int8", "listed for tflite", "not in its formats"]),
])
def test_invalid_profile_files_are_refused_with_the_field(tmp_path, yaml_text, words):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ProfileError) as err:
        load_profile_file(path)
    for word in words:
        assert word in str(err.value)


def test_profiles_command_lists_every_target():
    result = run_cli("edge-opt", "profiles")
    assert result.returncode == 0
    for name in REQUIRED:
        assert name in result.stdout
    assert "jetson-nano-int8" not in result.stdout
    shown = run_cli("edge-opt", "profiles", "show", "jetson-nano")
    assert shown.returncode == 0 and "not supported" in shown.stdout and "Maxwell" in shown.stdout
