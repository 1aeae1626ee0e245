"""A miner's reputation, as the mining servers keep it in Valkey (core.trust)."""

from redis import Redis

from core import trust
from core.schemas import ReputationOut
from core.settings import Settings
from core.storage import User


def reputation(redis: Redis, settings: Settings, user: User) -> ReputationOut:
    rep = trust.decode(redis.get(trust.key(user.id)))
    return ReputationOut(reputation=round(rep.score, 4), standing=rep.standing(settings).value, agreed=rep.agreed,
                         outvoted=rep.outvoted, strikes_left=max(0, settings.trust_strikes - rep.outvoted),
                         checked_share=rep.check_share(settings), barred_at=rep.barred_at)
