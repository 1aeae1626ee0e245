"""Users, login sessions and API tokens on Cassandra."""

from datetime import datetime
from typing import Any

from core.errors import Conflict
from core.storage.cassandra.ledger import CasUnknown
from core.storage.cassandra.schema import dt, opt_dt, opt_us, us
from core.storage.cassandra.session import CassandraBase
from core.storage.records import ApiToken, LoginSession, User


class CassandraAccounts(CassandraBase):
    def create_user(self, user: User) -> None:
        self._cas_retry("INSERT INTO users (id, username, password_hash, totp_secret, totp_enabled, totp_last_step, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                        (user.id, user.username, user.password_hash, user.totp_secret, user.totp_enabled,
                         user.totp_last_step, us(user.created_at)))
        applied, current = self._cas_retry("INSERT INTO usernames (username, user_id) VALUES (?, ?) IF NOT EXISTS",
                                           (user.username, user.id))
        if not applied and current["user_id"] != user.id:
            self._cas_retry("DELETE FROM users WHERE id = ? IF EXISTS", (user.id,))
            raise Conflict(f"username {user.username!r} is taken")

    def get_user(self, user_id: str) -> User | None:
        row = self._one("SELECT * FROM users WHERE id = ?", (user_id,))
        return User.model_validate({**row, "created_at": dt(row["created_at"])}) if row else None

    def get_user_by_username(self, username: str) -> User | None:
        row = self._one("SELECT user_id FROM usernames WHERE username = ?", (username,))
        return self.get_user(row["user_id"]) if row else None

    def set_totp_secret(self, user_id: str, secret: str) -> bool:
        return self._cas_retry("UPDATE users SET totp_secret = ? WHERE id = ? IF totp_enabled = false",
                               (secret, user_id))[0]

    def enable_totp(self, user_id: str) -> None:
        self._cas_retry("UPDATE users SET totp_enabled = true WHERE id = ? IF EXISTS", (user_id,))

    def use_totp_step(self, user_id: str, step: int) -> bool:
        try:
            return self._cas("UPDATE users SET totp_last_step = ? WHERE id = ? IF totp_last_step < ?",
                             (step, user_id, step))[0]
        except CasUnknown:
            return False  # refusing a code that may have been accepted is the safe answer

    def create_session(self, session: LoginSession) -> None:
        self._exec("INSERT INTO login_sessions (id, user_id, created_at, expires_at, revoked_at) "
                   "VALUES (?, ?, ?, ?, ?)",
                   (session.id, session.user_id, us(session.created_at), us(session.expires_at),
                    opt_us(session.revoked_at)))

    def get_session(self, session_id: str) -> LoginSession | None:
        row = self._one("SELECT * FROM login_sessions WHERE id = ?", (session_id,))
        if row is None:
            return None
        return LoginSession(id=row["id"], user_id=row["user_id"], created_at=dt(row["created_at"]),
                            expires_at=dt(row["expires_at"]), revoked_at=opt_dt(row["revoked_at"]))

    def revoke_session(self, session_id: str, at: datetime) -> None:
        current = self.get_session(session_id)
        if current is not None and current.revoked_at is None:
            self._exec("UPDATE login_sessions SET revoked_at = ? WHERE id = ?", (us(at), session_id))

    def create_api_token(self, token: ApiToken) -> None:
        self._exec("INSERT INTO api_tokens (id, owner_id, name, secret_hash, scopes, order_id, created_at, revoked_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (token.id, token.owner_id, token.name, token.secret_hash, token.scopes, token.order_id,
                    us(token.created_at), opt_us(token.revoked_at)))
        self._exec("INSERT INTO api_tokens_by_owner (owner_id, created_at, id) VALUES (?, ?, ?)",
                   (token.owner_id, us(token.created_at), token.id))

    @staticmethod
    def _token(row: dict[str, Any]) -> ApiToken:
        return ApiToken.model_validate({**row, "scopes": list(row["scopes"] or []), "created_at": dt(row["created_at"]),
                                        "revoked_at": opt_dt(row["revoked_at"])})

    def get_api_token(self, token_id: str) -> ApiToken | None:
        row = self._one("SELECT * FROM api_tokens WHERE id = ?", (token_id,))
        return self._token(row) if row else None

    def list_api_tokens(self, owner_id: str) -> list[ApiToken]:
        ids = [r["id"] for r in self._rows("SELECT id FROM api_tokens_by_owner WHERE owner_id = ?", (owner_id,))]
        rows = self._many("SELECT * FROM api_tokens WHERE id = ?", [(i,) for i in ids])
        return [self._token(r[0]) for r in rows if r]

    def revoke_api_token(self, owner_id: str, token_id: str, at: datetime) -> bool:
        token = self.get_api_token(token_id)
        if token is None or token.owner_id != owner_id:
            return False
        if token.revoked_at is None:
            self._exec("UPDATE api_tokens SET revoked_at = ? WHERE id = ?", (us(at), token_id))
        return True
