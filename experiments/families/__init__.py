"""Experiment families, one pytest plugin module each.

Every module here defines ``FAMILY`` (an :class:`experiments.studies.Family`) and may
define fixtures and hooks; dropping a new module here adds a family everywhere
(training CLI, tests, report) without touching anything else.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..studies import Family


def plugin_modules() -> list[str]:
    return [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]


def all_families() -> list[Family]:
    return [importlib.import_module(m).FAMILY for m in plugin_modules()]


def family(name: str) -> Family:
    for fam in all_families():
        if fam.name == name:
            return fam
    raise KeyError(f"unknown family {name!r}; known: {[f.name for f in all_families()]}")
