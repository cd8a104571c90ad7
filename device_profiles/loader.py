"""Load and validate the device profiles (one YAML file per device) and quantization schemes."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

from edge_sdk.errors import EdgeError

PROFILE_DIR = Path(__file__).parent
PRECISIONS = ("fp32", "fp16", "int8", "int4")
# Which edge_sdk backend runs each format (onnxruntime's providers come from the profile).
FORMAT_BACKEND = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}
# platform.machine() spellings of the profiles' cpu_arch values (Windows, macOS say otherwise).
_MACHINE_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}


def host_arch() -> str:
    """This machine's CPU class in the profiles' terms (cpu_arch), e.g. x86_64."""
    machine = platform.machine().lower()
    return _MACHINE_ALIASES.get(machine, machine)


class ProfileError(EdgeError):
    """A profile file is invalid, or a target names no known profile/precision."""


@dataclass(frozen=True)
class Unsupported:
    reason: str
    instead: str


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    cpu_arch: str
    cpu: str
    accelerator: str
    execution_providers: tuple[str, ...]
    threads: int
    memory_budget_mb: int
    formats: tuple[str, ...]  # formats the device runs, preferred first
    precisions: dict[str, dict]  # precision -> {"format": default, "schemes": {format: name}}
    max_drop: float
    aliases: tuple[str, ...] = ()
    unsupported: dict[str, Unsupported] = field(default_factory=dict)
    provider_options: dict = field(default_factory=dict)

    def backends(self) -> list[str]:
        """The runtimes that run this device's formats, preferred first."""
        return [FORMAT_BACKEND[f] for f in self.formats]

    def default_format(self, precision: str) -> str:
        return self.precisions[precision]["format"]

    def runs_on_host(self) -> bool:
        """Whether this build host is of the device's CPU class, so timing a bundle here says
        which of the device's formats is fastest (`--format auto`)."""
        return self.cpu_arch == host_arch()

    def formats_for(self, precision: str) -> tuple[str, ...]:
        """The formats this device runs `precision` in, preferred first: for int8/int4 only
        those with a quantization scheme here."""
        if precision not in ("int8", "int4"):
            return self.formats
        return tuple(f for f in self.formats if self.scheme(precision, f) is not None)

    def scheme(self, precision: str, fmt: str | None = None) -> dict | None:
        """The quantization scheme (from schemes.yaml) for `precision` in `fmt` (default: the
        precision's default format); None for fp32/fp16 or a format with no scheme here."""
        spec = self.precisions.get(precision, {})
        name = spec.get("schemes", {}).get(fmt or spec.get("format"))
        return None if name is None else {"name": name, **load_schemes()[name]}


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path.name} is not valid YAML: {exc}") from None


def load_profile_file(path: Path) -> Profile:
    data = _read_yaml(path)
    try:
        jsonschema.validate(data, _profile_schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ProfileError(f"device profile {path.name}, field {where}: {exc.message}") from None
    if data["name"] != path.stem:
        raise ProfileError(f"device profile {path.name} is named {data['name']!r}; "
                           f"the name must match the file name {path.stem!r}")
    schemes = load_schemes()
    for precision, spec in data["precisions"].items():
        if spec["format"] not in data["formats"]:
            raise ProfileError(f"device profile {path.name}: {precision} defaults to "
                               f"{spec['format']}, which is not in its formats {data['formats']}")
        if precision not in ("int8", "int4"):
            continue
        wanted = spec.get("schemes", {})
        if spec["format"] not in wanted:
            raise ProfileError(f"device profile {path.name}: {precision} needs a scheme for its "
                               f"default format {spec['format']} (precisions.{precision}.schemes)")
        for fmt, name in wanted.items():
            if name not in schemes:
                raise ProfileError(f"device profile {path.name}: {precision} {fmt} scheme "
                                   f"{name!r} is not one of {', '.join(sorted(schemes))}")
            if fmt not in data["formats"] or fmt not in schemes[name].get("formats", ()):
                raise ProfileError(f"device profile {path.name}: {precision} scheme {name!r} "
                                   f"is listed for {fmt}, which is not in its formats "
                                   f"{data['formats']} or not a format the scheme is for")
    rt = data["runtime"]
    return Profile(
        name=data["name"],
        description=data["description"],
        cpu_arch=data["cpu_arch"],
        cpu=data["cpu"],
        accelerator=data["accelerator"],
        formats=tuple(data["formats"]),
        execution_providers=tuple(rt["execution_providers"]),
        provider_options=rt.get("provider_options", {}),
        threads=data["threads"],
        memory_budget_mb=data["memory_budget_mb"],
        precisions=data["precisions"],
        max_drop=float(data["max_drop"]),
        aliases=tuple(data.get("aliases", ())),
        unsupported={k: Unsupported(**v) for k, v in data.get("unsupported", {}).items()},
    )


@lru_cache(maxsize=1)
def load_profiles() -> dict[str, Profile]:
    """All profiles by name, checked for clashing names and aliases."""
    profiles: dict[str, Profile] = {}
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        if path.name == "schemes.yaml":
            continue
        profile = load_profile_file(path)
        profiles[profile.name] = profile
    seen: dict[str, str] = {}
    for profile in profiles.values():
        for alias in profile.aliases:
            if alias in seen or (alias in profiles and alias != profile.name):
                raise ProfileError(f"alias {alias!r} of {profile.name} is already taken")
            seen[alias] = profile.name
    return profiles


@lru_cache(maxsize=1)
def load_schemes() -> dict[str, dict]:
    data = _read_yaml(PROFILE_DIR / "schemes.yaml")
    if not isinstance(data, dict):
        raise ProfileError("schemes.yaml must map scheme names to their settings")
    return data


# A scheme's own fields that say what it is rather than how it quantizes.
_DESCRIPTIVE = ("name", "calibrate_with", "formats", "description")


def qdq_scheme(scheme: dict) -> dict:
    """The onnxruntime scheme that quantizes for `scheme` (named, with "name"): the scheme it
    `calibrate_with`s, with the settings it changes on top. Changed settings make a scheme of
    their own name ("ort-u8s8+openvino-qdq"), so a run does not mix up the two models."""
    base = scheme.get("calibrate_with")
    if base is None:
        return scheme
    settings = load_schemes()[base]
    changed = {k: v for k, v in scheme.items()
               if k not in _DESCRIPTIVE and settings.get(k) != v}
    return {**settings, **changed, "name": f"{base}+{scheme['name']}" if changed else base}


def aliases() -> dict[str, str]:
    return {a: p.name for p in load_profiles().values() for a in p.aliases}


@lru_cache(maxsize=1)
def _profile_schema() -> dict:
    return json.loads((PROFILE_DIR / "profile.schema.json").read_text())
