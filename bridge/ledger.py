"""The router's ledger: what the cloud tiers cost this month, and how fast this machine works.

Both tables live in the job database (bridge/job_store.py owns its schema), so the monthly budget
and the measured local speed survive restarts beside the queue: `Ledger(store.database)`.
"""

from __future__ import annotations

import time

from bridge.database import Database


class Ledger:
    """Spend per cloud tier (for the monthly budget) and calibrated local speed, per key."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add_spend(self, tier: str, cost_usd: float, job_id: str | None = None, at: float | None = None) -> None:
        at = time.time() if at is None else at
        month = time.strftime("%Y-%m", time.gmtime(at))
        self.database.execute(
            "INSERT INTO spend (at, month, tier, job_id, cost_usd) VALUES (?, ?, ?, ?, ?)",
            (at, month, tier, job_id, float(cost_usd)),
        )

    def month_spend(self, at: float | None = None) -> float:
        """US dollars spent on cloud tiers in the (UTC) calendar month of `at` (default: now)."""
        month = time.strftime("%Y-%m", time.gmtime(time.time() if at is None else at))
        rows = self.database.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM spend WHERE month = ?", (month,))
        return float(rows[0][0])

    def calibration(self, key: str) -> tuple[float, int] | None:
        rows = self.database.execute(
            "SELECT seconds_per_audio_second, samples FROM calibration WHERE key = ?", (key,)
        )
        return (float(rows[0][0]), int(rows[0][1])) if rows else None

    def calibrate(self, key: str, seconds_per_audio_second: float, weight: float = 0.3) -> float:
        """Blend a new measurement into the stored speed (exponential average); returns it."""
        current = self.calibration(key)
        if current is None:
            value, samples = seconds_per_audio_second, 1
        else:
            value = (1 - weight) * current[0] + weight * seconds_per_audio_second
            samples = current[1] + 1
        self.database.execute(
            "INSERT INTO calibration (key, seconds_per_audio_second, samples, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET seconds_per_audio_second = excluded.seconds_per_audio_second, "
            "samples = excluded.samples, updated_at = excluded.updated_at",
            (key, value, samples, time.time()),
        )
        return value
