"""Users, login sessions and API tokens on SQL."""

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from core.errors import Conflict
from core.storage.records import ApiToken, LoginSession, User
from core.storage.sql.engine import SqlBase, record
from core.storage.sql.tables import ApiTokenRow, SessionRow, UserRow


class SqlAccounts(SqlBase):
    # --- users -------------------------------------------------------------------------

    def create_user(self, user: User) -> None:
        try:
            with self._write() as s:
                s.add(UserRow.model_validate(user.model_dump()))
        except IntegrityError:
            raise Conflict(f"username {user.username!r} is taken") from None

    def get_user(self, user_id: str) -> User | None:
        with self._read() as s:
            row = s.get(UserRow, user_id)
            return record(User, row) if row else None

    def get_user_by_username(self, username: str) -> User | None:
        with self._read() as s:
            row = s.exec(select(UserRow).where(UserRow.username == username)).first()
            return record(User, row) if row else None

    def set_totp_secret(self, user_id: str, secret: str) -> bool:
        with self._write() as s:
            stmt = (
                update(UserRow)
                .where(col(UserRow.id) == user_id, col(UserRow.totp_enabled).is_(False))
                .values(totp_secret=secret)
            )
            return s.exec(stmt).rowcount == 1

    def enable_totp(self, user_id: str) -> None:
        with self._write() as s:
            s.exec(update(UserRow).where(col(UserRow.id) == user_id).values(totp_enabled=True))

    def use_totp_step(self, user_id: str, step: int) -> bool:
        with self._write() as s:
            stmt = (
                update(UserRow)
                .where(col(UserRow.id) == user_id, col(UserRow.totp_last_step) < step)
                .values(totp_last_step=step)
            )
            return s.exec(stmt).rowcount == 1

    # --- sessions ----------------------------------------------------------------------

    def create_session(self, session: LoginSession) -> None:
        with self._write() as s:
            s.add(SessionRow.model_validate(session.model_dump()))

    def get_session(self, session_id: str) -> LoginSession | None:
        with self._read() as s:
            row = s.get(SessionRow, session_id)
            return record(LoginSession, row) if row else None

    def revoke_session(self, session_id: str, at: datetime) -> None:
        with self._write() as s:
            stmt = update(SessionRow).where(col(SessionRow.id) == session_id, col(SessionRow.revoked_at).is_(None))
            s.exec(stmt.values(revoked_at=at))

    # --- API tokens --------------------------------------------------------------------

    def create_api_token(self, token: ApiToken) -> None:
        with self._write() as s:
            s.add(ApiTokenRow.model_validate(token.model_dump()))

    def get_api_token(self, token_id: str) -> ApiToken | None:
        with self._read() as s:
            row = s.get(ApiTokenRow, token_id)
            return record(ApiToken, row) if row else None

    def list_api_tokens(self, owner_id: str) -> list[ApiToken]:
        with self._read() as s:
            stmt = (
                select(ApiTokenRow)
                .where(ApiTokenRow.owner_id == owner_id)
                .order_by(col(ApiTokenRow.created_at).desc(), col(ApiTokenRow.id).desc())
            )
            return [record(ApiToken, r) for r in s.exec(stmt)]

    def revoke_api_token(self, owner_id: str, token_id: str, at: datetime) -> bool:
        with self._write() as s:
            row = s.get(ApiTokenRow, token_id)
            if row is None or row.owner_id != owner_id:
                return False
            if row.revoked_at is None:
                row.revoked_at = at
            return True
