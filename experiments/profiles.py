"""Training profiles: ``full`` (all data, real epochs) and ``smoke`` (tiny, for CI)."""
from __future__ import annotations

import os

PROFILE_ENV = "SCRATCHNET_PROFILE"
PROFILES = ("full", "smoke")
SMOKE_SIZES = {"train": 300, "val": 100}  # samples per split in the smoke profile


def resolve_profile(option: str | None = None) -> str:
    """Profile from the pytest option, else ``$SCRATCHNET_PROFILE``, else ``full``."""
    profile = option or os.environ.get(PROFILE_ENV) or "full"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES} "
                         f"(option --profile or env {PROFILE_ENV})")
    return profile
