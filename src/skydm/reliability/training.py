"""Training the reliability model on labelled simulated DIA sources, and
measuring it on others.

Real sources (transients, variables) are the positives; every bogus class
the simulator makes (cosmic rays, satellite trails, ghosts, residuals of
stars and galaxies, noise) the negatives; moving objects are left out (see
:data:`skydm.reliability.truth.IGNORED`).  The classifier is scikit-learn's
``HistGradientBoostingClassifier``; its trees are exported into a
:class:`~skydm.reliability.model.ReliabilityModel`, which scores without
scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from skydm.errors import BadValueError, UserError, require_extra
from skydm.reliability.features import FEATURE_NAMES
from skydm.reliability.model import ReliabilityModel, Tree
from skydm.reliability.sample import Sample


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the boosted trees.

    Parameters
    ----------
    max_iter : int
        Boosting iterations (trees).
    max_leaf_nodes : int
        Leaves per tree.
    learning_rate : float
        Shrinkage of each tree's contribution.
    min_samples_leaf : int
        Least training sources in a leaf.
    l2_regularization : float
        L2 penalty on leaf values.
    real_weight : float
        Weight of a real source relative to a bogus one: above 1 trades
        purity for completeness at a fixed cut.
    random_state : int
        Seed of the trees' tie-breaking (the fit is deterministic given it).
    """

    max_iter: int = 150
    max_leaf_nodes: int = 8
    learning_rate: float = 0.08
    min_samples_leaf: int = 10
    l2_regularization: float = 1.0
    real_weight: float = 5.0
    random_state: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_iter <= 2000:
            raise BadValueError("TrainConfig.max_iter", self.max_iter, "1 to 2000 trees")
        if not 2 <= self.max_leaf_nodes <= 64:
            raise BadValueError("TrainConfig.max_leaf_nodes", self.max_leaf_nodes, "2 to 64")
        if not 0 < self.learning_rate <= 1:
            raise BadValueError("TrainConfig.learning_rate", self.learning_rate, "in (0, 1]")
        if self.min_samples_leaf < 1:
            raise BadValueError("TrainConfig.min_samples_leaf", self.min_samples_leaf, ">= 1")
        if not (self.l2_regularization >= 0 and math.isfinite(self.l2_regularization)):
            raise BadValueError("TrainConfig.l2_regularization", self.l2_regularization, ">= 0")
        if not (0 < self.real_weight < 100):
            raise BadValueError("TrainConfig.real_weight", self.real_weight, "in (0, 100)")


def train_model(
    sample: Sample, config: TrainConfig | None = None, *, info: dict[str, Any] | None = None
) -> ReliabilityModel:
    """Fit boosted trees to a labelled sample and export them.

    Parameters
    ----------
    sample : Sample
        Labelled DIA sources (movers are left out).
    config : TrainConfig, optional
        Tree settings.
    info : dict, optional
        Recorded in the model (seeds, held-out figures...).

    Returns
    -------
    ReliabilityModel

    Raises
    ------
    UserError
        When the sample holds no real or no bogus source.
    MissingExtraError
        When scikit-learn is not installed.
    """
    ensemble = require_extra("sklearn.ensemble", "reliability")
    cfg = config or TrainConfig()
    used = sample.used
    x = sample.features[used]
    y = sample.real[used].astype(int)
    if y.sum() == 0 or y.sum() == y.size:
        raise UserError(
            f"the training sample ({y.size} sources, {int(y.sum())} real) needs both real "
            "and bogus sources; simulate more seeds"
        )
    clf = ensemble.HistGradientBoostingClassifier(
        max_iter=cfg.max_iter,
        max_leaf_nodes=cfg.max_leaf_nodes,
        learning_rate=cfg.learning_rate,
        min_samples_leaf=cfg.min_samples_leaf,
        l2_regularization=cfg.l2_regularization,
        early_stopping=False,
        random_state=cfg.random_state,
    )
    weight = np.where(y == 1, cfg.real_weight, 1.0)
    clf.fit(x, y, sample_weight=weight)
    trees = []
    for (predictor,) in clf._predictors:
        nodes = predictor.nodes
        trees.append(
            Tree(
                feature=np.asarray(nodes["feature_idx"], dtype=np.int64),
                threshold=np.asarray(nodes["num_threshold"], dtype=np.float64),
                left=np.asarray(nodes["left"], dtype=np.int64),
                right=np.asarray(nodes["right"], dtype=np.int64),
                value=np.asarray(nodes["value"], dtype=np.float64),
                leaf=np.asarray(nodes["is_leaf"], dtype=bool),
            )
        )
    record = {"config": asdict(cfg), "n_train": int(y.size), "n_real": int(y.sum())}
    record.update(info or {})
    return ReliabilityModel(
        features=FEATURE_NAMES,
        baseline=float(np.ravel(clf._baseline_prediction)[0]),
        trees=tuple(trees),
        info=record,
    )


@dataclass(frozen=True)
class Evaluation:
    """How a model does on a labelled sample.

    Attributes
    ----------
    auc : float
        ROC area under the curve, real against bogus (movers left out).
    n_real, n_bogus, n_movers : int
        Sources of each kind in the sample.
    kept_real : float
        Fraction of real sources with reliability >= ``cut``.
    purity : float
        Fraction of the sources with reliability >= ``cut`` that are real
        (movers left out).
    kept_bogus : int
        Bogus sources that pass the cut.
    cut : float
        The reliability cut.
    """

    auc: float
    n_real: int
    n_bogus: int
    n_movers: int
    kept_real: float
    purity: float
    kept_bogus: int
    cut: float

    def as_dict(self) -> dict[str, float | int]:
        """The figures, rounded for printing."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half)."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(model: ReliabilityModel, sample: Sample, *, cut: float = 0.5) -> Evaluation:
    """ROC AUC, completeness and purity of ``model`` on ``sample`` at ``cut``."""
    score = model.predict(sample.features)
    used = sample.used
    real = sample.real
    kept = score >= cut
    n_kept = int((kept & used).sum())
    return Evaluation(
        auc=roc_auc(score[used], real[used]),
        n_real=int(real.sum()),
        n_bogus=int((used & ~real).sum()),
        n_movers=int((~used).sum()),
        kept_real=float((kept & real).sum() / max(int(real.sum()), 1)),
        purity=float((kept & real).sum() / n_kept) if n_kept else math.nan,
        kept_bogus=int((kept & used & ~real).sum()),
        cut=cut,
    )
