"""The ports a stage handler gets: settings, bus, storage and the job tracker (+ its guard)."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.bus import Bus
from runtime.jobs import JobGuard, JobTracker
from runtime.settings import Settings
from runtime.storage import Storage


@dataclass
class Ports:
    settings: Settings
    bus: Bus
    storage: Storage
    tracker: JobTracker
    guard: JobGuard = field(init=False)

    def __post_init__(self) -> None:
        if self.tracker.storage is None:
            self.tracker.storage = self.storage  # lets the lifecycle close a failed job's stream
        self.guard = JobGuard(self.tracker, self.storage)
