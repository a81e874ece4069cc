"""Every allowed combination with prompt source ``none``, end to end (tests/combinations.py)."""

import pytest
from cl_support import write_tiny_cifar
from combinations import check_combination, combinations


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("none") / "cifar", train_per_class=4, test_per_class=2)


@pytest.mark.parametrize("c", combinations("none"), ids=lambda c: c.id)
def test_resume_and_the_evaluation_batch_change_nothing_and_finished_tasks_stay(c, cifar, tmp_path, monkeypatch):
    check_combination(c, cifar, tmp_path, monkeypatch)
