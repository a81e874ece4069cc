import torch

from casdap.engine import threads


def test_small_cpu_inputs_get_one_thread_and_overrides_win(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose_threads(32)[0] == 1
    assert threads.choose_threads(224)[0] == torch.get_num_threads()
    assert threads.choose_threads(32, device="cuda")[0] == torch.get_num_threads()
    assert threads.choose_threads(32, requested=3) == (3, "as requested")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads(32) == (torch.get_num_threads(), "from OMP_NUM_THREADS")


def test_set_threads_applies_and_says_so_once(monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_announced", False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert threads.set_threads("casdap cl", 32) == 1 and torch.get_num_threads() == 1
        threads.set_threads("casdap cl", 32)
        err = capsys.readouterr().err
        assert err.count("casdap cl: 1 torch thread (32 px inputs") == 1 and "OMP_NUM_THREADS" in err
    finally:
        torch.set_num_threads(before)
