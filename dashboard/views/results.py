"""Per order: how far its repetitions got, each result with its status and timings, a page's body to
read or download, and how to receive every result with the result client."""

import codecs
import mimetypes
from email.message import Message

import pandas as pd
import streamlit as st

from core.schemas import OrderOut, ResultOut
from dashboard import changes, delivery, ui, webhooks
from dashboard import format as fmt

DEFAULT_OUT = "crawlcoin-results"
PAGE_SIZE = 20
TEXT_SHOWN = 64 * 1024  # bytes of a page shown as text; the download has all of it
TEXT_TYPES = {"application/json", "application/xml", "application/javascript", "application/xhtml+xml",
              "application/rss+xml", "application/atom+xml", "application/ld+json", "image/svg+xml"}
LANGUAGES = {"html": "html", "json": "json", "xml": "xml", "javascript": "javascript", "css": "css",
             "csv": "text", "svg": "xml", "rss": "xml", "atom": "xml"}


def repetitions_frame(order: OrderOut) -> pd.DataFrame:
    """How many repetitions are in each state (the API's words), and when the ones to come run."""
    tz = ui.viewer_timezone()
    counts = order.repetitions.model_dump()
    status = order.status.value
    later = {"paused": "after resume"}.get(status, f"{fmt.schedule_text(order.schedule).replace('`', '')}")
    when = {"fetching": "now", "queued": "due now, as soon as a miner is free",
            "waiting": f"next {fmt.when(order.next_run_at, tz)}" if order.next_run_at else later,
            "scheduled": later, "delivered": "their results are listed below",
            "refunded": "order cancelled" if status == "cancelled" else "coins back in your wallet",
            "failed": "every attempt failed; refunded"}
    rows = [{"State": words.capitalize(), "Repetitions": f"{counts[k]:,}", "When": when[k]}
            for k, words in {**fmt.TO_COME, **fmt.SETTLED}.items() if counts[k]]
    return pd.DataFrame(rows, columns=["State", "Repetitions", "When"])


def progress(order: OrderOut) -> None:
    tz = ui.viewer_timezone()
    status_col, done_col, left_col, next_col = st.columns(4)
    status_col.metric("Status", order.status.value.capitalize())
    counts = order.repetitions.model_dump()
    done = sum(counts[k] for k in fmt.SETTLED)
    done_col.metric("Repetitions done", f"{done:,} of {order.max_runs:,}",
                    help="Settled: delivered (the miner was paid), refunded or failed.")
    left_col.metric("Repetitions left", f"{order.max_runs - done:,}")
    next_col.metric("Next run", fmt.relative(order.next_run_at) if order.status.value == "active"
                    and order.next_run_at else "—")
    st.progress(done / order.max_runs if order.max_runs else 0.0,
                text=f"{counts['delivered']:,} of {order.max_runs:,} repetitions delivered"
                     f" ({fmt.repetition_parts(counts, {**fmt.TO_COME, **fmt.SETTLED})})")
    st.dataframe(repetitions_frame(order), hide_index=True, width="stretch")
    st.caption(f"{order.method} {order.url} · {fmt.schedule_text(order.schedule)} · first run "
               f"{fmt.when(order.start_at, tz)} · order id `{order.id}`")


def result_client(order: OrderOut) -> None:
    st.subheader("Receive the results")
    st.markdown("The result client receives every result of this order, also the ones delivered while it was "
                "offline, and writes each one into a folder on your computer, under the order's id: the page as "
                "`<n>-<time>.html` (or `.json`, `.txt`, … after its content type) and beside it "
                "`<n>-<time>.meta.json` with the status, final URL, headers, SHA-256 and timings.")
    out = st.text_input("Folder on your computer", value=DEFAULT_OUT, key=f"out_{order.id}")
    server = ui.settings().results_url
    created = st.session_state.setdefault("results_tokens", {}).get(order.id)
    if created:
        st.success("Results token created. Copy the command now: the token is shown only this once.",
                   icon=":material/key:")
        st.code(fmt.results_command(server, created, order.id, out or DEFAULT_OUT), language="bash", wrap_lines=True)
    else:
        st.code(fmt.results_command(server, "<TOKEN>", order.id, out or DEFAULT_OUT), language="bash", wrap_lines=True)
        if st.button("Create a results token for this order", key=f"results_token_{order.id}", type="primary",
                     icon=":material/key:"):
            with ui.reporting("No token was created:"):
                token = ui.api().create_token(f"results {fmt.short_id(order.id)}", ["results"], order.id)
                st.session_state["results_tokens"][order.id] = token.token
                st.rerun()
    st.caption("Install the client with `pip install 'crawlcoin[results]'`. The token can read the results of "
               "this order only. Add `--changes` to write only the results that changed, each with a `.diff`"
               + (", and every page comes with its extracted value in `<n>-<time>.extract.txt`." if order.extraction
                  else "."))
    retention = ui.api().meta().result_body_retention_seconds
    if retention is not None:
        st.caption(f"Pages are kept here for {fmt.duration(retention)} after the result client receives them, then "
                   "deleted; their size, SHA-256, status, headers and timings stay listed.")


def existing_tokens(order: OrderOut) -> None:
    tokens = [t for t in ui.api().tokens() if t.order_id == order.id and "results" in t.scopes and not t.revoked_at]
    if not tokens:
        return
    tz = ui.viewer_timezone()
    with st.expander(f"Results tokens of this order ({len(tokens)})"):
        for token in tokens:
            name_col, button_col = st.columns([4, 1], vertical_alignment="center")
            name_col.markdown(f"**{token.name}** · created {fmt.when(token.created_at, tz)}")
            if button_col.button("Revoke", key=f"revoke_{token.id}"):
                with ui.reporting("The token was not revoked:"):
                    ui.api().revoke_token(token.id)
                    st.session_state.get("results_tokens", {}).pop(order.id, None)
                    ui.flash("success", f"Token “{token.name}” revoked: result clients using it are refused now.")
                    st.rerun()


CHECKED = {"validated": "✓ validated", "unchecked": "unchecked", "disputed": "⚠ disputed"}
"""A result's validation as the table says it: another miner's fetch agreed, nobody compared it, or the checks
disagreed."""


def results_frame(results: list[ResultOut]) -> pd.DataFrame:
    tz = ui.viewer_timezone()
    rows = [{
        "#": r.n,
        "Status": fmt.result_status(r) + (f": {r.error_text}" if r.error and r.error_text else ""),
        "Checked": CHECKED.get(r.validation.value, r.validation.value),
        "Fetched at": fmt.when(r.fetched_at, tz),
        "Delivery latency": fmt.latency(delivery.delivery_seconds(r)),
        "Fetch time": fmt.latency(r.elapsed_ms / 1000),
        "Size": fmt.size(r.body_size) + (" (page deleted)" if r.body_pruned_at else ""),
        "Truncated": r.truncated,
        "Final URL": r.final_url,
    } for r in results]
    return pd.DataFrame(rows, columns=["#", "Status", "Checked", "Fetched at", "Delivery latency", "Fetch time",
                                       "Size", "Truncated", "Final URL"])


def _cursors(order: OrderOut) -> list[str]:
    """The `before` cursors of the pages the viewer went back through (empty: the newest page)."""
    return st.session_state.setdefault("results_cursors", {}).setdefault(order.id, [])


def results_table(order: OrderOut) -> list[ResultOut]:
    """One page of the order's results, newest first, with buttons to page through; returns the page."""
    st.subheader("Delivered results")
    if not order.runs_claimed:
        st.info("No repetition has run yet, so there are no results. They appear here as the miners deliver "
                "them" + (f"; the first run is {fmt.relative(order.next_due_at)}." if order.next_due_at
                          and order.status.value == "active" else "."))
        return []
    api = ui.api()
    with st.container(key="delivery"):
        delivery.metrics(order, delivery.Delivery(api.recent_results(order.id, delivery.RECENT)))
    cursors = _cursors(order)
    page = api.results_page(order.id, PAGE_SIZE, cursors[-1] if cursors else None)
    if not page.items:
        if cursors:  # the page we were on is gone (should not happen); start again from the newest
            cursors.clear()
            st.rerun()
        st.info("No results have arrived yet. Repetitions that have started are being fetched by the miners; "
                "their results appear here as they are delivered.")
        return []
    st.dataframe(results_frame(page.items), hide_index=True, width="stretch", key="results_table",
                 column_config={
                     "#": st.column_config.NumberColumn("#", format="%d", width="small"),
                     "Delivery latency": st.column_config.TextColumn(
                         help="From the repetition's scheduled time until its result was stored."),
                     "Fetch time": st.column_config.TextColumn(help="How long the miner's request took."),
                     "Truncated": st.column_config.CheckboxColumn(
                         help="The page was longer than the body limit and was cut."),
                     "Final URL": st.column_config.TextColumn(help="After redirects.")})
    newer_col, where_col, older_col = st.columns([1, 3, 1], vertical_alignment="center")
    if newer_col.button("Newer", key="results_newer", icon=":material/chevron_left:", disabled=not cursors,
                        width="stretch"):
        cursors.pop()
        st.rerun()
    where_col.caption(f"Repetitions #{page.items[0].n:,} to #{page.items[-1].n:,}, newest first "
                      f"({order.runs_claimed:,} started so far).")
    if older_col.button("Older", key="results_older", icon=":material/chevron_right:", width="stretch",
                        disabled=page.next_cursor is None) and page.next_cursor is not None:
        cursors.append(page.next_cursor)
        st.rerun()
    return page.items


def _media_type(content_type: str) -> tuple[str, str | None]:
    message = Message()
    message["content-type"] = content_type
    return message.get_content_type(), message.get_param("charset")  # type: ignore[return-value]


def _is_text(media_type: str, data: bytes) -> bool:
    if media_type.startswith("text/") or media_type in TEXT_TYPES or media_type.endswith(("+json", "+xml")):
        return True
    if media_type == "application/octet-stream" and b"\x00" not in data[:4096]:
        try:  # no type given: text when its start is UTF-8 (a character cut at 4096 bytes is fine)
            codecs.getincrementaldecoder("utf-8")().decode(data[:4096], final=False)
            return True
        except UnicodeDecodeError:
            return False
    return False


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def _language(media_type: str) -> str:
    subtype = media_type.split("/")[-1].split("+")[-1]
    return LANGUAGES.get(subtype, "text")


def _body(order: OrderOut, n: int) -> tuple[bytes, str]:
    """The body of one repetition, kept for this browser session while it is the one looked at."""
    cached = st.session_state.get("result_body")
    if cached and cached[0] == (order.id, n):
        return cached[1], cached[2]
    data, content_type = ui.api().result_body(order.id, n)
    st.session_state["result_body"] = ((order.id, n), data, content_type)
    return data, content_type


def body_viewer(order: OrderOut, results: list[ResultOut]) -> None:
    """Read one repetition's page (text is shown, capped) and download it whole."""
    by_n = {r.n: r for r in results}
    st.markdown("**Look at a page**")
    n = st.selectbox("Repetition", list(by_n), key=f"body_pick_{order.id}_{results[0].n}",
                     format_func=lambda i: f"#{i:,} · {fmt.result_status(by_n[i])} · {fmt.size(by_n[i].body_size)}")
    result = by_n[n]
    if result.error and not result.body_size:
        st.warning(f"Repetition #{n:,} has no page: {fmt.result_status(result).lower()}"
                   + (f" ({result.error_text})." if result.error_text else "."), icon=":material/error:")
        return
    if result.body_pruned_at is not None:
        st.info(f"The page of repetition #{n:,} was deleted on {fmt.when(result.body_pruned_at, ui.viewer_timezone())}:"
                " pages are kept for a while after the result client receives them. Its size, SHA-256 "
                f"(`{result.sha256[:16]}…`) and headers are still here.", icon=":material/auto_delete:")
        _headers(result)
        return
    if not result.body_size:
        st.info(f"Repetition #{n:,} fetched an empty page ({fmt.result_status(result)}"
                f"{', a HEAD request has no body' if order.method == 'HEAD' else ''}).")
        _headers(result)
        return
    with ui.reporting(f"The page of repetition #{n:,} could not be loaded:") as outcome:
        data, content_type = _body(order, n)
    if outcome.error:
        return
    media_type, charset = _media_type(content_type)
    extension = mimetypes.guess_extension(media_type) or ".bin"
    st.download_button(f"Download page #{n:,} ({fmt.size(len(data))})", data,
                       file_name=f"{fmt.short_id(order.id)}-{n}{extension}", mime=media_type, on_click="ignore",
                       key=f"download_{order.id}_{n}", icon=":material/download:", type="primary")
    if result.truncated:
        st.caption(f"The page was longer than the body limit; the first {fmt.size(result.body_size)} were kept.")
    if _is_text(media_type, data):
        text = _decode(data[:TEXT_SHOWN], charset)
        if len(data) > TEXT_SHOWN:
            st.caption(f"Showing the first {fmt.size(TEXT_SHOWN)} of {fmt.size(len(data))} ({media_type}); "
                       "download the page for all of it.")
        else:
            st.caption(f"{media_type} · {fmt.size(len(data))} · sha256 `{result.sha256[:16]}…`")
        with st.container(key="result_body"):
            tall = text.count("\n") > 30 or len(text) > 4000
            st.code(text, language=_language(media_type), height=480 if tall else "content", wrap_lines=True)
    elif media_type.startswith("image/"):
        st.caption(f"{media_type} · {fmt.size(len(data))}")
        st.image(data)
    else:
        st.info(f"This page is not text ({media_type}, {fmt.size(len(data))}). Download it to open it.")
    _headers(result)


def _headers(result: ResultOut) -> None:
    if not result.headers:
        return
    with st.expander(f"Response headers ({len(result.headers)})"):
        st.dataframe(pd.DataFrame({"Header": list(result.headers), "Value": list(result.headers.values())}),
                     hide_index=True, width="stretch")


def main() -> None:
    st.title("Results")
    orders, _ = ui.api().orders()
    if not orders:
        st.info("You have no orders yet. Place one on the Orders page; its results will be here.")
        st.page_link("views/orders.py", label="Go to Orders", icon=":material/schedule:")
        return
    by_id = {o.id: o for o in orders}
    ids = list(by_id)
    wanted = st.session_state.pop("results_order", None)
    if wanted in by_id:
        st.session_state["results_pick"] = wanted
    elif st.session_state.get("results_pick") not in by_id:
        st.session_state["results_pick"] = ids[0]
    order_id = st.selectbox("Order", ids, key="results_pick",
                            format_func=lambda i: f"{by_id[i].url} · {by_id[i].status.value} · {fmt.short_id(i)}")
    order = by_id[order_id]
    progress(order)
    results = results_table(order)
    if results:
        body_viewer(order, results)
        changes.timeline(order)
        changes.export(order)
    st.divider()
    result_client(order)
    existing_tokens(order)
    st.divider()
    webhooks.section(order)


main()
