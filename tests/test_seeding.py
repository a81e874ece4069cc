import random

import numpy as np
import torch

from casdap.engine.seeding import capture_rng_state, restore_rng_state, seed_everything


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_seeds_python_numpy_and_torch():
    seed_everything(3)
    a = _draws()
    seed_everything(3)
    assert _draws() == a
    seed_everything(3, rank=1)
    assert _draws() != a


def test_restored_state_continues_the_same_streams():
    seed_everything(0)
    _draws()
    state = capture_rng_state()
    expected = _draws()
    seed_everything(99)
    restore_rng_state(state)
    assert _draws() == expected


def test_checkpoints_in_the_first_continual_layout_still_restore():
    """Continual-run checkpoints were first written with a flat layout; resuming them must still work."""
    seed_everything(5)
    np_state = np.random.get_state()
    py = random.getstate()
    flat = {"torch": torch.get_rng_state(), "python": list(py[1]), "python_version": py[0], "python_gauss": py[2],
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
            "numpy_gauss": [int(np_state[3]), float(np_state[4])]}
    expected = _draws()
    seed_everything(7)
    restore_rng_state(flat)
    assert _draws() == expected
