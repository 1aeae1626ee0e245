"""Each miner's reputation: how often its checked results agreed with other miners', and what that earns it.

A reputation is per account (every connection of one volunteer shares it), kept in Valkey as one
JSON value per account and changed only when a check decides something about the account's fetch:

- `score`: an exponential moving average of agreement (1 for a fetch that agreed, 0 for one
  outvoted), weight `CRAWLCOIN_TRUST_ALPHA` (0.15, as Bittensor's data-universe credibility);
  a new account starts at 0.5;
- `agreed` / `outvoted`: the counts behind it, and `streak`: agreeing checks since the last
  outvoted one; `barred_at`: when its outvoted count reached `CRAWLCOIN_TRUST_STRIKES`.

An account is trusted once its score is at least `CRAWLCOIN_TRUST_THRESHOLD` (0.9) after a run of
`CRAWLCOIN_TRUST_AFTER` (25) agreeing checks in a row, as BOINC's adaptive replication trusts a
host after a run of valid results: a miner that fakes one page in five makes such a run less than
once in a hundred tries (0.8^25 ≈ 0.4 %), and is barred at its second outvoted page.

The standing that follows decides how often its results are checked and whether it mines at all:
`new` and `suspect` (below the threshold; suspect once outvoted) have every result checked
(`CRAWLCOIN_CHECK_SHARE_UNTRUSTED`) and hold at most `CRAWLCOIN_UNTRUSTED_CAPACITY` jobs, `trusted`
ones have a random `CRAWLCOIN_CHECK_SHARE_TRUSTED` of them checked (adaptive replication, as
BOINC's), and `barred` ones get no job and no pay. Losing a reputation (Valkey lost its data) makes
the account new again: checked in full, which is the safe direction.
"""

import json
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis
from redis.exceptions import WatchError

from core.protocol import KEY_PREFIX
from core.settings import Settings

PRIOR = 0.5


class Standing(StrEnum):
    new = "new"  # not yet trusted, never outvoted: every result checked
    trusted = "trusted"  # a share of its results checked
    suspect = "suspect"  # outvoted before and below the threshold: every result checked
    barred = "barred"  # outvoted `trust_strikes` times: no jobs, no pay


class Reputation(BaseModel):
    score: float = Field(default=PRIOR, description="EMA of agreement with other miners' fetches, 0…1.")
    agreed: int = Field(default=0, description="Checked results that agreed with the majority.")
    outvoted: int = Field(default=0, description="Checked results outvoted by two agreeing fetches.")
    streak: int = Field(default=0, description="Checked results that agreed since the last one outvoted.")
    barred_at: datetime | None = None

    def standing(self, settings: Settings) -> Standing:
        if self.barred_at is not None:
            return Standing.barred
        if self.score >= settings.trust_threshold and self.streak >= settings.trust_after:
            return Standing.trusted
        return Standing.suspect if self.outvoted else Standing.new

    def check_share(self, settings: Settings) -> float:
        """The probability that one of its results is checked."""
        standing = self.standing(settings)
        if standing is Standing.trusted:
            return settings.check_share_trusted
        return 0.0 if standing is Standing.barred else settings.check_share_untrusted

    def capacity(self, announced: int, settings: Settings) -> int:
        """Jobs it may hold at once (results awaiting their check included): fewer while it is not trusted and
        its results are checked."""
        standing = self.standing(settings)
        if standing is Standing.barred:
            return 0
        if standing is Standing.trusted or settings.check_share_untrusted == 0:
            return announced
        return min(announced, settings.untrusted_capacity)

    def after(self, agreed: bool, settings: Settings, at: datetime | None = None) -> "Reputation":
        """The reputation after one decided check of its fetch."""
        score = (1 - settings.trust_alpha) * self.score + settings.trust_alpha * (1.0 if agreed else 0.0)
        outvoted = self.outvoted + (0 if agreed else 1)
        barred_at = self.barred_at
        if barred_at is None and outvoted >= settings.trust_strikes:
            barred_at = at or datetime.now(UTC)
        return Reputation(score=score, agreed=self.agreed + (1 if agreed else 0), outvoted=outvoted,
                          streak=self.streak + 1 if agreed else 0, barred_at=barred_at)


def key(user_id: str) -> str:
    return f"{KEY_PREFIX}:trust:{user_id}"


def decode(raw: bytes | str | None) -> Reputation:
    if not raw:
        return Reputation()
    try:
        return Reputation.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return Reputation()


class TrustBook:
    """The reputations in Valkey, as the mining servers read and change them."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    async def get_many(self, user_ids: list[str]) -> dict[str, Reputation]:
        if not user_ids:
            return {}
        raws = await self.redis.mget([key(u) for u in user_ids])
        return {u: decode(raw) for u, raw in zip(user_ids, raws, strict=True)}

    async def record(self, agreed: list[str], outvoted: list[str]) -> dict[str, Reputation]:
        """Apply one decided check to the reputations of the miners it judged; returns their new reputations.

        Each account's value is read and written back under WATCH, so two servers deciding checks of the
        same miner at once both count."""
        out: dict[str, Reputation] = {}
        for user_id, ok in [(u, True) for u in agreed] + [(u, False) for u in outvoted]:
            out[user_id] = await self._apply(user_id, ok)
        return out

    async def _apply(self, user_id: str, agreed: bool) -> Reputation:
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key(user_id))
                    rep = decode(await pipe.get(key(user_id))).after(agreed, self.settings)
                    pipe.multi()
                    pipe.set(key(user_id), rep.model_dump_json())
                    await pipe.execute()
                    return rep
                except WatchError:
                    continue
