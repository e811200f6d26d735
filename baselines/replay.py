"""A FIFO episode replay buffer kept on the learner's device."""

from __future__ import annotations

import torch

from ctmarl.learner import EpisodeBatch


class EpisodeReplay:
    """Holds up to ``capacity`` episodes padded to the env's episode limit."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.device = device
        self.storage: EpisodeBatch | None = None
        self.size = 0
        self.cursor = 0

    def __len__(self) -> int:
        return self.size

    def add(self, batch: EpisodeBatch) -> None:
        batch = batch.to(self.device)
        if self.storage is None:
            self.storage = EpisodeBatch(
                *(torch.zeros((self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device) for t in batch)
            )
        n = batch.reward.shape[0]
        if n > self.capacity:
            batch = EpisodeBatch(*(t[-self.capacity:] for t in batch))
            n = self.capacity
        index = (self.cursor + torch.arange(n, device=self.device)) % self.capacity
        for store, new in zip(self.storage, batch):
            store[index] = new
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> EpisodeBatch:
        """``batch_size`` episodes uniformly without replacement, cut to their longest length."""
        if self.storage is None or self.size < batch_size:
            raise ValueError(f"replay holds {self.size} episodes, {batch_size} requested")
        pick = torch.randperm(self.size, generator=generator, device=generator.device)[:batch_size]
        pick = pick.to(self.device)
        batch = EpisodeBatch(*(t[pick] for t in self.storage))
        steps = int(batch.mask.sum(0).nonzero().max()) + 1
        return EpisodeBatch(
            batch.obs[:, : steps + 1],
            batch.state[:, : steps + 1],
            batch.avail_actions[:, : steps + 1],
            batch.actions[:, :steps],
            batch.reward[:, :steps],
            batch.terminated[:, :steps],
            batch.mask[:, :steps],
        )

    def state_dict(self) -> dict:
        """Capacity, write position and the stored episodes, only the filled rows: until the
        buffer wraps, rows [size:] were never written (and are never sampled)."""
        stored = None
        if self.storage is not None:
            if self.size == self.capacity:
                stored = self.storage._asdict()
            else:  # a copy, so that only these rows are saved, not the whole underlying storage
                # (off the CPU straight to host memory: no second replay-sized buffer on the GPU)
                stored = {name: t[: self.size].clone() if t.device.type == "cpu" else t[: self.size].cpu()
                          for name, t in self.storage._asdict().items()}
        return {"capacity": self.capacity, "size": self.size, "cursor": self.cursor, "storage": stored}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay state holds capacity {state['capacity']}, this replay {self.capacity}")
        stored = state["storage"]
        self.storage = None
        if stored is not None:
            columns = [stored[name] for name in EpisodeBatch._fields]
            self.storage = EpisodeBatch(*(
                torch.zeros((self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device) for t in columns))
            for store, rows in zip(self.storage, columns):
                store[: rows.shape[0]] = rows.to(self.device)
        self.size, self.cursor = int(state["size"]), int(state["cursor"])
