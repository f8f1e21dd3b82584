"""The reliability model: boosted decision trees kept as plain JSON.

Training uses scikit-learn's ``HistGradientBoostingClassifier``
(:mod:`skydm.reliability.training`); the fitted trees are written out as
arrays of node fields, so that scoring needs numpy alone, the model file is
small, reviewable and diffable, and no pickle is ever loaded.  The version
written into every alert (``reliabilityVersion``) names the model family and
a hash of the trees, so that two different models never share a version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from skydm.errors import BadFileError
from skydm.image import Exposure
from skydm.reliability.features import FEATURE_NAMES, compute_features

#: The model shipped with skydm, rebuilt by ``scripts/train_reliability.py``.
PACKAGED_MODEL = Path(__file__).with_name("model.json")

#: Format of the model file.
FORMAT = "skydm-reliability-trees/1"


def _baseline(value: float) -> float:
    """The baseline as the file holds it (10 significant digits)."""
    return float(f"{value:.10g}")


@dataclass(frozen=True)
class Tree:
    """One regression tree: node arrays, node 0 the root.

    A sample goes left at a split node when its feature value is at most the
    threshold; a leaf's ``value`` is its additive contribution to the log-odds.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    leaf: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Leaf value of each row of ``x``."""
        node = np.zeros(x.shape[0], dtype=np.int64)
        rows = np.arange(x.shape[0])
        for _ in range(self.leaf.size):
            active = ~self.leaf[node]
            if not active.any():
                break
            f = self.feature[node]
            go_left = x[rows, f] <= self.threshold[node]
            step = np.where(go_left, self.left[node], self.right[node])
            node = np.where(active, step, node)
        return np.asarray(self.value[node], dtype=np.float64)

    def to_json(self) -> dict[str, list[Any]]:
        """Node arrays as lists (thresholds and values to 7 significant digits)."""
        return {
            "feature": self.feature.tolist(),
            "threshold": [float(f"{t:.7g}") for t in self.threshold],
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": [float(f"{v:.7g}") for v in self.value],
            "leaf": [int(b) for b in self.leaf],
        }

    @classmethod
    def from_json(cls, d: dict[str, list[Any]]) -> Tree:
        """The inverse of :meth:`to_json`."""
        return cls(
            feature=np.asarray(d["feature"], dtype=np.int64),
            threshold=np.asarray(d["threshold"], dtype=np.float64),
            left=np.asarray(d["left"], dtype=np.int64),
            right=np.asarray(d["right"], dtype=np.int64),
            value=np.asarray(d["value"], dtype=np.float64),
            leaf=np.asarray(d["leaf"], dtype=bool),
        )


@dataclass(frozen=True)
class ReliabilityModel:
    """A trained real/bogus classifier.

    Attributes
    ----------
    features : tuple of str
        Feature names, in the order the trees index them.
    baseline : float
        Log-odds before the first tree.
    trees : tuple of Tree
        The boosted trees; their leaf values add up to the log-odds.
    info : dict
        How it was trained (seeds, settings, held-out figures), for the record.
    """

    features: tuple[str, ...]
    baseline: float
    trees: tuple[Tree, ...]
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @functools.cached_property
    def version(self) -> str:
        """``skydm-rb-<10 hex digits>``: a hash of the features and the trees."""
        body = json.dumps(
            [list(self.features), _baseline(self.baseline), [t.to_json() for t in self.trees]],
            sort_keys=True,
        )
        return "skydm-rb-" + hashlib.sha256(body.encode()).hexdigest()[:10]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Reliability (probability of being real) of each row of ``features``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"features must be (n, {len(self.features)}), not {x.shape}")
        logit = np.full(x.shape[0], self.baseline)
        for tree in self.trees:
            logit += tree.predict(x)
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))

    def to_json(self) -> dict[str, Any]:
        """The model as a JSON-ready dict."""
        return {
            "format": FORMAT,
            "version": self.version,
            "features": list(self.features),
            "baseline": _baseline(self.baseline),
            "trees": [t.to_json() for t in self.trees],
            "info": self.info,
        }

    def write(self, path: str | Path) -> Path:
        """Write the model file atomically."""
        from skydm.repo.atomic import atomic_write_bytes

        path = Path(path)
        text = json.dumps(self.to_json(), separators=(",", ":")) + "\n"
        return atomic_write_bytes(path, text.encode())

    @classmethod
    def read(cls, path: str | Path) -> ReliabilityModel:
        """Read a model file.

        Raises
        ------
        BadFileError
            When the file is missing, not JSON, of another format, or made
            for other features than this skydm computes.
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BadFileError(path, f"not a readable reliability model ({exc})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BadFileError(path, f"not a reliability model of format {FORMAT}")
        if tuple(d["features"]) != FEATURE_NAMES:
            raise BadFileError(
                path,
                "made for other features than this skydm computes; rebuild it with "
                "scripts/train_reliability.py",
            )
        model = cls(
            features=tuple(d["features"]),
            baseline=float(d["baseline"]),
            trees=tuple(Tree.from_json(t) for t in d["trees"]),
            info=dict(d.get("info", {})),
        )
        if d.get("version") != model.version:
            raise BadFileError(path, "its trees do not match its recorded version (edited?)")
        return model


@functools.cache
def packaged_model() -> ReliabilityModel:
    """The model shipped with skydm (read once)."""
    return ReliabilityModel.read(PACKAGED_MODEL)


def score_sources(
    sources: Table,
    difference: Exposure,
    *,
    science: Exposure | None = None,
    template: Exposure | None = None,
    model: ReliabilityModel | None = None,
) -> None:
    """Add ``reliability`` and ``reliability_version`` columns to a DIA source table.

    Parameters
    ----------
    sources : astropy.table.Table
        DIA sources of :func:`skydm.diffim.detect_dia_sources` (``x``, ``y``
        and flag columns), changed in place.
    difference : Exposure
        The difference image they were found on.
    science, template : Exposure, optional
        The science image and the template on the difference's grid (the
        model was trained with both; without them it is less sure).
    model : ReliabilityModel, optional
        The packaged model by default.
    """
    model = model or packaged_model()
    feats = compute_features(sources, difference, science=science, template=template)
    score = model.predict(feats) if len(sources) else np.zeros(0)
    sources["reliability"] = score.astype(np.float32)
    sources["reliability_version"] = np.full(
        len(sources), model.version, dtype=f"U{len(model.version)}"
    )
    sources.meta["reliability_version"] = model.version
    if not math.isfinite(float(np.sum(score))):
        raise ValueError("reliability model gave non-finite scores")
