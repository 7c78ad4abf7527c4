"""The router's ledger: what the cloud tiers cost this month, and how fast this machine works.

Its tables live in the job database (bridge/job_store.py owns its schema), so the monthly budget,
the measured local speed of file jobs and the live stream's measured compute survive restarts beside
the queue: `Ledger(store.database)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bridge.database import Database


@dataclass(frozen=True)
class KeptCompute:
    """The compute p99 of a live stream's last `hops` hops on one engine setting, as of `updated_at` (unix)."""

    p99_ms: float
    hops: int
    updated_at: float


class Ledger:
    """Spend per cloud tier (for the monthly budget), calibrated local speed per key, and the live
    stream's compute per engine setting."""

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

    def stream_compute(self, key: str) -> KeptCompute | None:
        rows = self.database.execute("SELECT p99_ms, hops, updated_at FROM stream_compute WHERE key = ?", (key,))
        return KeptCompute(float(rows[0][0]), int(rows[0][1]), float(rows[0][2])) if rows else None

    def keep_stream_compute(self, key: str, kept: KeptCompute) -> None:
        """The last stream's figure replaces the one before (the machine as it is now, not an average)."""
        self.database.execute(
            "INSERT INTO stream_compute (key, p99_ms, hops, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET p99_ms = excluded.p99_ms, hops = excluded.hops, "
            "updated_at = excluded.updated_at",
            (key, kept.p99_ms, kept.hops, kept.updated_at),
        )
