"""Parse `--target PROFILE-PRECISION` (e.g. jetson-int8, rpi5-fp16) into a checked Target."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from device_profiles.loader import (
    FORMAT_BACKEND,
    PRECISIONS,
    Profile,
    ProfileError,
    aliases,
    load_profiles,
    load_schemes,
)

FORMATS = tuple(FORMAT_BACKEND)


@dataclass(frozen=True)
class Target:
    name: str  # canonical "profile-precision", e.g. "jetson-orin-nano-int8"
    requested: str  # what the user typed, e.g. "jetson-int8"
    profile: Profile
    precision: str
    format: str
    scheme_override: str | None = None  # a scheme chosen with --scheme

    @property
    def backend(self) -> str:
        return FORMAT_BACKEND[self.format]

    @property
    def scheme(self) -> dict | None:
        if self.scheme_override is not None:
            return {"name": self.scheme_override, **load_schemes()[self.scheme_override]}
        return self.profile.scheme(self.precision, self.format)

    def with_scheme(self, name: str) -> Target | None:
        """This target using scheme `name` instead of the profile's, if the scheme fits its
        format and precision; None otherwise."""
        scheme = load_schemes().get(name)
        if scheme is None:
            raise ProfileError(f"unknown scheme {name!r}; schemes: "
                               f"{', '.join(sorted(load_schemes()))}")
        bits = {"int8": 8, "int4": 4}.get(self.precision)
        if bits != scheme["bits"] or self.format not in scheme["formats"]:
            return None
        return replace(self, scheme_override=name)


def all_target_names(include_aliases: bool = True) -> list[str]:
    names = []
    for profile in load_profiles().values():
        prefixes = [profile.name] + (list(profile.aliases) if include_aliases else [])
        for prefix in prefixes:
            names += [f"{prefix}-{p}" for p in PRECISIONS if p in profile.precisions]
    return names


def resolve_profile(name: str) -> Profile:
    profiles = load_profiles()
    name = aliases().get(name, name)
    if name not in profiles:
        close = difflib.get_close_matches(name, list(profiles) + list(aliases()), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ProfileError(f"unknown device profile {name!r}; {hint}"
                           "`edge-opt profiles` lists them all")
    return profiles[name]


def resolve_target(text: str, fmt: str | None = None) -> Target:
    """Resolve a target string; refuse precisions the device cannot run, saying what to use."""
    text = text.strip().lower()
    prefix, _, precision = text.rpartition("-")
    if not prefix or precision not in PRECISIONS:
        close = difflib.get_close_matches(text, all_target_names(), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ProfileError(
            f"unknown target {text!r}: a target is PROFILE-PRECISION with PRECISION one of "
            f"{', '.join(PRECISIONS)}; {hint}`edge-opt profiles` lists every target"
        )
    profile = resolve_profile(prefix)
    if precision in profile.unsupported:
        why = profile.unsupported[precision]
        raise ProfileError(f"{profile.name} cannot run {precision}: {why.reason}; "
                           f"use --target {why.instead}")
    if precision not in profile.precisions:
        ok = ", ".join(f"{profile.name}-{p}" for p in profile.precisions)
        raise ProfileError(f"{profile.name} does not support {precision}; use one of: {ok}")
    if fmt is not None and fmt not in FORMATS:
        raise ProfileError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt is not None and fmt not in profile.formats:
        raise ProfileError(f"{profile.name} runs {' or '.join(profile.formats)}, not {fmt}; "
                           f"drop --format or use one of those")
    if (fmt is not None and precision in ("int8", "int4")
            and profile.scheme(precision, fmt) is None):
        raise ProfileError(f"{profile.name} has no {precision} scheme for {fmt}; "
                           f"use --format {profile.default_format(precision)}")
    return Target(
        name=f"{profile.name}-{precision}",
        requested=text,
        profile=profile,
        precision=precision,
        format=fmt or profile.default_format(precision),
    )
