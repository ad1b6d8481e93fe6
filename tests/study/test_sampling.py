"""Sampling, budget and storage on a real in-memory Optuna study (no training)."""

from __future__ import annotations

import time

import optuna
import pytest

from leukoml import names
from leukoml.backbones import get_backbone
from leukoml.errors import LeukomlError
from leukoml.locks import mask_url
from leukoml.study import budget_used, open_storage, parse_search_space

SPACE = parse_search_space({
    "tiers": {"low": ["Asghar2022CNN", "MobileNetV3Small"], "medium": ["ResNet50"]},
    "image_size": "backbone_default",
    "max_image_size": 96,
    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "batch_size": [16, 32],
    "patience": {"low": 2, "high": 4},
    "class_weight": ["none", "balanced"],
})


def test_trials_sample_a_tier_then_a_backbone_of_that_tier():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        config = SPACE.sample(trial, "synthetic")
        tier = trial.params[names.TIER]
        assert trial.params[f"{names.BACKBONE}_{tier}"] == config.backbone
        assert config.backbone in SPACE.tiers[tier]
        assert 1e-4 <= config.peak_learning_rate() <= 1e-2
        assert config.batch_size in (16, 32) and 2 <= config.patience <= 4
        assert config.monitor == SPACE.objective_metric
        entry = get_backbone(config.backbone)  # its native size, capped at 96
        assert config.image_size == max(entry.min_size, min(entry.default_size, 96))
        seen.add(config.backbone)
        study.tell(trial, 0.5)
    assert seen == {"Asghar2022CNN", "MobileNetV3Small", "ResNet50"}


def test_the_same_seed_samples_the_same_trials():
    def sampled(seed):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                                                       group=True))
        out = []
        for i in range(12):
            trial = study.ask()
            out.append(SPACE.sample(trial, "synthetic"))
            study.tell(trial, float(i % 3))
        return out

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)


def test_a_retried_trial_replaces_the_lost_one_in_the_budget():
    study = optuna.create_study()
    for value in (0.1, 0.2):
        trial = study.ask()
        study.tell(trial, value)
    lost = study.ask()
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    assert budget_used(study) == 3  # an ordinary failure counts
    frozen = study.trials[lost.number]
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)
    assert budget_used(study) == 3  # the queued retry stands in for the lost trial


def test_storage_urls_are_masked_and_unreachable_ones_fail_at_once():
    assert mask_url("postgresql://leuko:s3cret@db:5432/optuna") == \
        "postgresql://leuko:***@db:5432/optuna"
    assert mask_url("sqlite:///optuna.db") == "sqlite:///optuna.db"
    started = time.monotonic()
    with pytest.raises(LeukomlError, match=r"postgresql://leuko:\*\*\*@127.0.0.1:9/") as info:
        open_storage("postgresql://leuko:s3cret@127.0.0.1:9/optuna")
    assert "s3cret" not in str(info.value)
    assert time.monotonic() - started < 30
    with pytest.raises(LeukomlError, match="expected an RDB URL"):
        open_storage("optuna.db")


def test_journal_and_sqlite_storages_keep_a_study(tmp_path):
    for url in (str(tmp_path / "study.journal"), f"sqlite:///{tmp_path / 'study.db'}"):
        study = optuna.create_study(study_name="s", storage=open_storage(url))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        again = optuna.load_study(study_name="s", storage=open_storage(url))
        assert len(again.trials) == 2
