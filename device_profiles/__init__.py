"""Device profiles: what each device runs and how it wants its numbers (one YAML per device)."""

from device_profiles.loader import (
    FORMAT_BACKEND,
    PRECISIONS,
    Profile,
    ProfileError,
    aliases,
    host_arch,
    load_profile_file,
    load_profiles,
    load_schemes,
    qdq_scheme,
)
from device_profiles.targets import (
    FORMATS,
    Target,
    all_target_names,
    resolve_profile,
    resolve_target,
)

__all__ = [
    "FORMAT_BACKEND",
    "FORMATS",
    "PRECISIONS",
    "Profile",
    "ProfileError",
    "Target",
    "aliases",
    "all_target_names",
    "host_arch",
    "load_profile_file",
    "load_profiles",
    "load_schemes",
    "qdq_scheme",
    "resolve_profile",
    "resolve_target",
]
