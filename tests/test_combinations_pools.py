"""Every allowed combination with the prompt-pool sources (l2p, dualprompt, coda_prompt), end to end
(tests/combinations.py); and the schema allows each listed combination (the refusals of the others:
tests/test_prompt_pipeline.py, tests/test_prompt_sources.py)."""

import pytest
from cl_support import tiny_cifar_cfg, write_tiny_cifar
from combinations import DAP_SOURCES, POOL_SOURCES, check_combination, combinations, method, settings

from casdap.continual.methods import check_config

POOL_COMBINATIONS = [c for s in POOL_SOURCES for c in combinations(s)]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("pools") / "cifar", train_per_class=4, test_per_class=2)


def test_the_schema_allows_every_listed_combination(tmp_path):
    listed = [c for s in (*DAP_SOURCES, *POOL_SOURCES) for c in combinations(s)]
    assert len(listed) == 3 * 2 * 4 * 3 + 2 * 2 + 2 * 2 + 2 * 4 * 2 == len(set(listed))
    for c in listed:
        check_config(tiny_cifar_cfg(tmp_path, tmp_path / c.id, method(c), *settings(c)))


@pytest.mark.parametrize("c", POOL_COMBINATIONS, ids=lambda c: c.id)
def test_resume_and_the_evaluation_batch_change_nothing_and_finished_tasks_stay(c, cifar, tmp_path, monkeypatch):
    check_combination(c, cifar, tmp_path, monkeypatch)
