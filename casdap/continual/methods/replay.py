"""``replay``: fine-tuning with a class-balanced buffer of ``BASELINES.REPLAY_MEM_SIZE`` images mixed
into every batch (Avalanche's ``ReplayPlugin``)."""

from casdap.continual.methods.base import Method, ResumableNaive


def replay_plugins(size: int) -> list:
    """The random-state recorder, then the replay plugin: the recorder runs before the buffer update,
    so a resumed run rebuilds the same buffer."""
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer

    from casdap.continual.plugins import RngRecorderPlugin

    replay = ReplayPlugin(mem_size=size, storage_policy=ClassBalancedBuffer(max_size=size, adaptive_size=True))
    return [RngRecorderPlugin(), replay]


class Replay(Method):
    name = "replay"

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        return ResumableNaive(model=model, optimizer=optimizer, criterion=self.criterion(),
                              plugins=[*replay_plugins(cfg.BASELINES.REPLAY_MEM_SIZE), *plugins], **common)


METHOD = Replay()
