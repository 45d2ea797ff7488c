"""Keeping a ledger job's lease alive from a background thread while its owner works."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from pipeline.ledger import Ledger

log = logging.getLogger("pipeline.ledger")

OPEN_STATES = ("intent", "in_flight")


class Lease:
    """A background renewal of one owner's lease (see ``Ledger.hold``). ``lost`` turns True, and an
    error is logged, when a renewal finds that another process took the job over."""

    def __init__(self, ledger: "Ledger", key: str, owner: str, lease_s: float):
        self.ledger, self.key, self.owner, self.lease_s = ledger, key, owner, float(lease_s)
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{key[:8]}", daemon=True)
        self.renewals = 0

    @property
    def lost(self) -> bool:
        """True once another process owns the job."""
        return self._lost.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def renew_now(self) -> bool:
        """Renew at once; False (and ``lost``) if the job was taken over."""
        outcome = self.ledger.renew(self.key, self.owner, self.lease_s)
        if outcome == "lost" and not self._lost.is_set():
            self._lost.set()
            log.error("ledger: lost the lease on job %s: another process took it over; this process (%s) will "
                      "not create anything more for it", self.key[:12], self.owner)
        if outcome == "renewed":
            self.renewals += 1
        return outcome != "lost"

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.renew_now():
                    return
                job = self.ledger.get(self.key)
                if job is None or job.state not in OPEN_STATES:
                    return
            except sa.exc.SQLAlchemyError as exc:  # a busy file, a lost connection: try again next period
                log.warning("ledger: could not renew the lease on %s: %s", self.key[:12], exc)
