"""Study declarations: the one place that says what each family varies.

A *family* (cnn, rnn, lstm) is a dataset plus a model builder plus a baseline
configuration.  A *study* varies one hyperparameter of that baseline; a *variant*
is one value of it.  Variants of different studies that land on the same
configuration (every study contains the baseline) share one trained model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable


def slug(value: Any) -> str:
    """Readable id fragment: (32, 64, 128) -> '32_64_128', True -> 'true'."""
    if isinstance(value, (tuple, list)):
        return "_".join(slug(v) for v in value)
    return str(value).lower()


def canonical(obj: Any) -> str:
    """Stable JSON used for fingerprints (tuples and lists hash alike)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def fingerprint(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Study:
    """One hyperparameter of a family's baseline and the values it takes."""
    name: str                       # id fragment, e.g. "filters"
    param: str                      # key in the family config
    values: tuple                   # the variants, in display order
    title: str                      # human title, e.g. "Filters per conv layer"
    describe: Callable[[Any], str] = field(default=lambda v: slug(v), compare=False)
    also_changes: str = ""          # what else varying this changes (the conclusions say it)


@dataclass(frozen=True)
class Variant:
    family: "Family"
    study: Study
    value: Any

    @property
    def id(self) -> str:
        return f"{self.family.name}-{self.study.name}-{slug(self.value)}"

    @property
    def config(self) -> dict:
        return {**self.family.baseline, self.study.param: self.value}

    @property
    def label(self) -> str:
        return self.study.describe(self.value)


@dataclass(frozen=True)
class Family:
    """An experiment family: data, model builder, baseline, training recipe, studies.

    ``recipe`` maps profile name -> training settings (epochs, batch_size, ...,
    ``seeds``: every configuration trains once per seed);
    ``load_data()`` returns :class:`experiments.data.Splits`;
    ``build_model(config, splits)`` returns an uncompiled ``keras.Model``;
    ``superseded`` maps profile name -> the recipe that ``recipe`` replaced, while the
    runs of the new one are still being built: the old runs stay in the cache (they back
    the committed report) and are recognised as such, not as stale entries.
    """
    name: str
    title: str
    baseline: dict
    studies: tuple[Study, ...]
    recipe: dict
    load_data: Callable[[str], Any]
    build_model: Callable[[dict, Any], Any]
    superseded: dict = field(default_factory=dict)

    def variants(self) -> list[Variant]:
        return [Variant(self, s, v) for s in self.studies for v in s.values]

    def configs(self) -> list[dict]:
        """Distinct configurations, in first-seen order (what actually trains)."""
        seen: dict[str, dict] = {}
        for v in self.variants():
            seen.setdefault(canonical(v.config), v.config)
        return list(seen.values())

    def seeds(self, profile: str, config: dict) -> tuple[int, ...]:
        """The seeds ``config`` trains with: ``baseline_seeds`` for the baseline, else ``seeds``."""
        recipe = self.recipe[profile]
        if canonical(config) == canonical(self.baseline) and "baseline_seeds" in recipe:
            return tuple(recipe["baseline_seeds"])
        return tuple(recipe["seeds"])

    def runs(self, profile: str) -> list[tuple[dict, int]]:
        """Every (config, seed) to train, seed-major (all configs get their first seed before
        any gets its second, so an interrupted build covers every variant early), the
        baseline first in each round (it is in every study)."""
        configs = sorted(self.configs(), key=lambda c: canonical(c) != canonical(self.baseline))
        plan = [(c, self.seeds(profile, c)) for c in configs]  # the baseline first
        depth = max(len(s) for _, s in plan)
        return [(c, s[i]) for i in range(depth) for c, s in plan if i < len(s)]
