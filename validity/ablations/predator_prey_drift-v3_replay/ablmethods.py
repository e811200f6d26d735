"""Replay ablation control for predator_prey_drift-v3: keep the whole network, empty the replay.

``KeepNetClearReplay`` is the missing cell of a 2x2 design (network kept / re-initialised x replay
kept / emptied at each task start after the first): ``none`` keeps both, ``reset_all`` renews
both, ``reset_all`` with ``clear_replay: false`` renews only the network, and this method renews
only the replay. It touches no parameter.
"""

from __future__ import annotations

from ctmarl.errors import ConfigError
from ctmarl.method import Method


class KeepNetClearReplay(Method):
    touches = "nothing"

    def attach(self, learner, context) -> None:
        super().attach(learner, context)
        if not context.announce_task_boundaries:
            raise ConfigError("KeepNetClearReplay needs a protocol that announces task boundaries")

    def on_task_start(self, task_index: int) -> None:
        if task_index > 0:
            self.learner.reinitialise((), clear_replay=True)
