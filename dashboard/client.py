"""The dashboard's HTTP client for the crawlcoin API: one method per endpoint, errors as exceptions."""

from typing import Any

import httpx

from core.schemas import (
    CancelOut,
    ChangeOut,
    ChangePage,
    CronPreview,
    LedgerEntryOut,
    LedgerPage,
    MeOut,
    MetaOut,
    OrderOut,
    OrderPage,
    Registered,
    ReputationOut,
    ResultOut,
    ResultPage,
    SessionOut,
    TokenCreated,
    TokenOut,
    TotpEnrolment,
    WalletOut,
    WebhookCreated,
    WebhookDeliveryPage,
    WebhookOut,
)


class ApiError(Exception):
    """The API answered with an error; `detail` is its readable message."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self.errors = errors or []


class SessionExpired(ApiError):
    """A request made with a session token was refused: the user must log in again."""


class ApiUnreachable(ApiError):
    """No answer from the API at all (down, wrong address, timeout)."""

    def __init__(self, base_url: str, reason: str) -> None:
        super().__init__(0, f"the crawlcoin API at {base_url} does not answer ({reason})")
        self.base_url = base_url


class Api:
    """The API as one user sees it; `token` is the session token once logged in, `forwarded_for` the
    X-Forwarded-For chain that ends with the user's address (the API believes it from trusted proxies)."""

    def __init__(self, http: httpx.Client, token: str | None = None, forwarded_for: str | None = None) -> None:
        self.http = http
        self.token = token
        self.forwarded_for = forwarded_for

    # --- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, auth: bool = True) -> Any:
        r = self._send(method, path, json=json, params=params, headers=headers, auth=auth)
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def _send(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None, auth: bool = True) -> httpx.Response:
        sent_headers = dict(headers or {})
        if self.forwarded_for:
            sent_headers["X-Forwarded-For"] = self.forwarded_for
        if auth and self.token:
            sent_headers["Authorization"] = f"Bearer {self.token}"
        try:
            r = self.http.request(method, path, json=json, params=params, headers=sent_headers)
        except httpx.TimeoutException:
            raise ApiUnreachable(str(self.http.base_url), "timed out") from None
        except httpx.TransportError as e:
            raise ApiUnreachable(str(self.http.base_url), type(e).__name__) from None
        if r.status_code >= 400:
            raise _error_of(r, session_sent="Authorization" in sent_headers)
        return r

    # --- accounts ---------------------------------------------------------------------------

    def register(self, username: str, password: str) -> Registered:
        body = self._request("POST", "/auth/register", json={"username": username, "password": password}, auth=False)
        return Registered.model_validate(body)

    def totp_setup(self, username: str, password: str) -> TotpEnrolment:
        body = self._request("POST", "/auth/totp/setup", json={"username": username, "password": password},
                             auth=False)
        return TotpEnrolment.model_validate(body)

    def totp_confirm(self, username: str, password: str, code: str) -> SessionOut:
        body = self._request("POST", "/auth/totp/confirm",
                             json={"username": username, "password": password, "code": code}, auth=False)
        return SessionOut.model_validate(body)

    def login(self, username: str, password: str, code: str) -> SessionOut:
        body = self._request("POST", "/auth/login", json={"username": username, "password": password, "code": code},
                             auth=False)
        return SessionOut.model_validate(body)

    def logout(self) -> None:
        self._request("POST", "/auth/logout")

    def me(self) -> MeOut:
        return MeOut.model_validate(self._request("GET", "/me"))

    # --- service ----------------------------------------------------------------------------

    def meta(self) -> MetaOut:
        return MetaOut.model_validate(self._request("GET", "/meta", auth=False))

    def cron_preview(self, cron: str, timezone: str, count: int = 5) -> CronPreview:
        return CronPreview.model_validate(self._request("GET", "/schedules/cron-preview", auth=False,
                                                        params={"cron": cron, "timezone": timezone, "count": count}))

    # --- coins ------------------------------------------------------------------------------

    def reputation(self) -> ReputationOut:
        return ReputationOut.model_validate(self._request("GET", "/me/reputation"))

    def wallet(self) -> WalletOut:
        return WalletOut.model_validate(self._request("GET", "/wallet"))

    def ledger_page(self, limit: int = 200, cursor: str | None = None) -> LedgerPage:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return LedgerPage.model_validate(self._request("GET", "/wallet/ledger", params=params))

    def ledger(self, max_entries: int = 2000) -> tuple[list[LedgerEntryOut], bool]:
        """Newest first, up to `max_entries`; the flag says whether older entries were left out."""
        entries: list[LedgerEntryOut] = []
        cursor: str | None = None
        while len(entries) < max_entries:
            page = self.ledger_page(min(200, max_entries - len(entries)), cursor)
            entries.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return entries, False
        return entries, True

    def faucet(self, amount: int, idempotency_key: str) -> WalletOut:
        body = self._request("POST", "/wallet/faucet", json={"amount": amount},
                             headers={"Idempotency-Key": idempotency_key})
        return WalletOut.model_validate(body)

    # --- API tokens -------------------------------------------------------------------------

    def tokens(self) -> list[TokenOut]:
        return [TokenOut.model_validate(t) for t in self._request("GET", "/tokens")]

    def create_token(self, name: str, scopes: list[str], order_id: str | None = None) -> TokenCreated:
        body = self._request("POST", "/tokens", json={"name": name, "scopes": scopes, "order_id": order_id})
        return TokenCreated.model_validate(body)

    def revoke_token(self, token_id: str) -> None:
        self._request("DELETE", f"/tokens/{token_id}")

    # --- webhooks ---------------------------------------------------------------------------

    def webhooks(self) -> list[WebhookOut]:
        return [WebhookOut.model_validate(w) for w in self._request("GET", "/webhooks")]

    def create_webhook(self, url: str, event: str, order_id: str | None = None) -> WebhookCreated:
        body = self._request("POST", "/webhooks", json={"url": url, "event": event, "order_id": order_id})
        return WebhookCreated.model_validate(body)

    def delete_webhook(self, webhook_id: str) -> None:
        self._request("DELETE", f"/webhooks/{webhook_id}")

    def webhook_deliveries(self, webhook_id: str, limit: int = 50) -> WebhookDeliveryPage:
        """The newest `limit` deliveries of the webhook, newest first."""
        body = self._request("GET", f"/webhooks/{webhook_id}/deliveries", params={"limit": limit})
        return WebhookDeliveryPage.model_validate(body)

    # --- orders -----------------------------------------------------------------------------

    def create_order(self, order: dict[str, Any], idempotency_key: str) -> OrderOut:
        body = self._request("POST", "/orders", json=order, headers={"Idempotency-Key": idempotency_key})
        return OrderOut.model_validate(body)

    def orders_page(self, limit: int = 20, cursor: str | None = None) -> OrderPage:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return OrderPage.model_validate(self._request("GET", "/orders", params=params))

    def orders(self, max_orders: int = 500) -> tuple[list[OrderOut], bool]:
        """Newest first, up to `max_orders`; the flag says whether older orders were left out."""
        orders: list[OrderOut] = []
        cursor: str | None = None
        while len(orders) < max_orders:
            page = self.orders_page(min(100, max_orders - len(orders)), cursor)
            orders.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return orders, False
        return orders, True

    def order(self, order_id: str) -> OrderOut:
        return OrderOut.model_validate(self._request("GET", f"/orders/{order_id}"))

    def pause(self, order_id: str) -> OrderOut:
        return OrderOut.model_validate(self._request("POST", f"/orders/{order_id}/pause"))

    def resume(self, order_id: str) -> OrderOut:
        return OrderOut.model_validate(self._request("POST", f"/orders/{order_id}/resume"))

    def edit_order(self, order_id: str, changes: dict[str, Any]) -> OrderOut:
        """Change an active or paused order (`PATCH /orders/{id}`): only the fields in `changes`."""
        return OrderOut.model_validate(self._request("PATCH", f"/orders/{order_id}", json=changes))

    def cancel(self, order_id: str) -> CancelOut:
        return CancelOut.model_validate(self._request("POST", f"/orders/{order_id}/cancel"))

    # --- results ----------------------------------------------------------------------------

    def results_page(self, order_id: str, limit: int = 20, before: str | None = None) -> ResultPage:
        """Newest repetition first; `before` is the previous page's `next_cursor`."""
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        return ResultPage.model_validate(self._request("GET", f"/orders/{order_id}/results", params=params))

    def recent_results(self, order_id: str, max_results: int = 100) -> list[ResultOut]:
        """The newest `max_results` results of an order, newest first."""
        results: list[ResultOut] = []
        cursor: str | None = None
        while len(results) < max_results:
            page = self.results_page(order_id, min(100, max_results - len(results)), cursor)
            results.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        return results

    def changes_page(self, order_id: str, limit: int = 100, after: int = 0) -> ChangePage:
        """Oldest change first; `after` is the previous page's `next_cursor`."""
        params = {"limit": limit, "after": after}
        return ChangePage.model_validate(self._request("GET", f"/orders/{order_id}/changes", params=params))

    def changes(self, order_id: str, max_changes: int = 1000) -> list[ChangeOut]:
        """The order's changes, oldest first, at most `max_changes`."""
        changes: list[ChangeOut] = []
        after = 0
        while len(changes) < max_changes:
            page = self.changes_page(order_id, min(100, max_changes - len(changes)), after)
            changes.extend(page.items)
            if page.next_cursor is None:
                break
            after = int(page.next_cursor)
        return changes

    def export(self, order_id: str, format: str, since: str | None = None, until: str | None = None) -> bytes:
        """The order's results as one file (jsonl, csv or zip), fetched [since, until) (ISO 8601 with a zone)."""
        params = {"format": format} | {k: v for k, v in (("since", since), ("until", until)) if v}
        return self._send("GET", f"/orders/{order_id}/export", params=params).content

    def result_body(self, order_id: str, n: int) -> tuple[bytes, str]:
        """The page a repetition fetched, and its content type."""
        r = self._send("GET", f"/orders/{order_id}/results/{n}/body")
        return r.content, r.headers.get("content-type", "application/octet-stream")


def _error_of(r: httpx.Response, session_sent: bool) -> ApiError:
    detail = f"the API answered {r.status_code} {r.reason_phrase}"
    errors: list[dict[str, Any]] = []
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str) and body["detail"]:
            detail = body["detail"]
        if isinstance(body.get("errors"), list):
            errors = [e for e in body["errors"] if isinstance(e, dict)]
    retry_after = None
    if r.status_code == 429:
        try:
            retry_after = max(1, int(r.headers.get("Retry-After", "")))
        except ValueError:
            retry_after = None
    if r.status_code == 401 and session_sent:
        return SessionExpired(r.status_code, detail)
    return ApiError(r.status_code, detail, retry_after=retry_after, errors=errors)


def new_http(base_url: str, timeout: float = 15.0) -> httpx.Client:
    """One connection pool per API address, shared by every browser session of this process."""
    return httpx.Client(base_url=base_url, timeout=timeout, headers={"User-Agent": "crawlcoin-dashboard"})
