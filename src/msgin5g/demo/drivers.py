"""Former name of :mod:`.drive` (the UE drivers), kept for modules that still import it."""

from .drive import UeRun

__all__ = ["UeRun"]
