"""The ports a stage handler gets: settings, bus, storage and the job tracker."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.bus import Bus
from runtime.jobs import JobTracker
from runtime.settings import Settings
from runtime.storage import Storage


@dataclass
class Ports:
    settings: Settings
    bus: Bus
    storage: Storage
    tracker: JobTracker
