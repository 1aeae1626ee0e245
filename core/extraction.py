"""What of a fetched page an order keeps and watches (`core.schemas.Extraction`), and the page as text.

The parser is parsel, Scrapy's selector library on lxml: one parsed tree answers both CSS selectors
(translated to XPath by cssselect) and XPath 1.0, including parsel's `::text` and `::attr(name)`
pseudo-elements, and it reads the broken HTML real sites serve. (selectolax is faster but has no
XPath, which customers of change-watching tools ask for.)

An extracted value is text, one line per match: a match that is a string (`::text`, `@href`,
`text()`) is kept as it is, stripped; a match that is an element is replaced by its visible text
(script, style and template contents left out) with runs of whitespace made one space. `text`
keeps the visible text of the whole page, one line per text node. Values are capped at
`MAX_VALUE_CHARS`.
"""

import re

from cssselect import SelectorError
from parsel import Selector

from core.errors import InvalidInput
from core.schemas import Extraction

MAX_VALUE_CHARS = 262_144
_INVISIBLE = "ancestor::script or ancestor::style or ancestor::noscript or ancestor::template"
_SPACE = re.compile(r"\s+")
_TEXT_TYPES = ("text/", "json", "xml", "javascript", "ecmascript", "csv")


def check(extraction: Extraction) -> None:
    """Raise InvalidInput, naming the problem, if the selector cannot be compiled."""
    probe = Selector(text="<html><body></body></html>")
    try:
        _select(probe, extraction)
    except (ValueError, SelectorError) as e:  # bad XPath is a ValueError in parsel, bad CSS cssselect's error
        what = "CSS selector" if extraction.kind == "css" else "XPath expression"
        raise InvalidInput(f"the extraction's {what} is not valid: {e}") from None


def _charset(content_type: str | None) -> str | None:
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None


def _decode(body: bytes, content_type: str | None) -> str:
    try:
        return body.decode(_charset(content_type) or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        return body.decode("utf-8", errors="replace")


def page_text(body: bytes, content_type: str | None) -> str | None:
    """The page as text for a diff, or None if it is binary (an image, a PDF, an archive …)."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime:
        return _decode(body, content_type) if any(t in mime for t in _TEXT_TYPES) else None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _select(page: Selector, extraction: Extraction) -> list[str]:
    if extraction.kind == "text":
        nodes = page.xpath(f"//body//text()[not({_INVISIBLE})]") or page.xpath(f"//text()[not({_INVISIBLE})]")
        return [line for line in (_squash(n.get()) for n in nodes) if line]
    matches = page.css(extraction.selector or "") if extraction.kind == "css" else page.xpath(extraction.selector or "")
    lines = []
    for match in matches:
        if isinstance(match.root, str):
            lines.append(match.root.strip())
        else:
            lines.append(_squash(" ".join(match.xpath(f".//text()[not({_INVISIBLE})]").getall())))
    return lines


def extract(extraction: Extraction, body: bytes, content_type: str | None) -> tuple[str, bool]:
    """The extracted value of a page, one line per match, and whether it was cut at MAX_VALUE_CHARS."""
    text = _decode(body, content_type)
    try:
        lines = _select(Selector(text=text or "<html></html>"), extraction)
    except (ValueError, SelectorError):  # an XPath that compiled but fails on this page (a function on a wrong type)
        lines = []
    value = "\n".join(lines)
    if len(value) > MAX_VALUE_CHARS:
        return value[:MAX_VALUE_CHARS], True
    return value, False
