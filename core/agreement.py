"""Whether two miners' fetches of the same repetition agree, tolerating what changes from fetch to fetch.

Pages differ between two honest fetches seconds apart: timestamps, counters, rotating ads and
teasers, session tokens. So a check does not ask for equal bytes. Two fetches agree when

- both failed with the same error, or both got a page with the same HTTP status, the same final
  URL (after redirects) and the same media type, and
- their contents are similar: for text (HTML is reduced to its visible text first, so tokens in
  attributes, scripts and styles do not count) the Jaccard similarity of their sets of word
  3-shingles is at least `CRAWLCOIN_AGREEMENT_THRESHOLD`; binary bodies must be equal. A body cut
  at a miner's cap is compared over the part both fetches kept.

Two fetches *clearly* disagree below `CRAWLCOIN_DISAGREEMENT_THRESHOLD`. Between the two thresholds
a pair neither agrees nor clearly disagrees: that costs a further fetch, never a miner's reputation
(`core.validation`), so the noise of a page that changes more than most is paid in fetches, not
by honest miners.

The server holds both pages when it compares them, so it computes the exact Jaccard similarity of
the two shingle sets rather than estimating it from MinHash or SimHash signatures: a 128-permutation
MinHash estimate has a standard error of about 0.04 at J = 0.5 (√(J(1−J)/128)), which is noise on
the decision for nothing in return; signatures only pay when pages must be compared without
holding them. `bench/validation.py` measures the similarities of honest and altered fetches that
the threshold sits between.
"""

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urldefrag

from core.extraction import extract, page_text
from core.schemas import Extraction
from core.storage.records import Result

SHINGLE_WORDS = 3
_WORD = re.compile(r"\w+")
_VISIBLE = Extraction(kind="text")


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What of a fetch a check compares."""

    error: str | None
    status: int | None
    final_url: str
    media_type: str
    shingles: frozenset[int] | None  # None: a binary body, compared by `digest`
    digest: str


def media_type(headers: dict[str, str]) -> str:
    for name, value in headers.items():
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower()
    return ""


def _content_type(headers: dict[str, str]) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == "content-type"), None)


def visible_text(body: bytes, content_type: str | None) -> str | None:
    """The words a person sees on the page: HTML's visible text, other text as it is; None if binary."""
    text = page_text(body, content_type)
    if text is None:
        return None
    if "html" in (content_type or "").lower() or text.lstrip()[:1] == "<":
        return extract(_VISIBLE, body, content_type)[0]
    return text


def shingles(text: str, size: int = SHINGLE_WORDS) -> frozenset[int]:
    """Hashes of the text's runs of `size` consecutive words (lower-cased); a shorter text is one shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return frozenset({hash(" ".join(words))}) if words else frozenset()
    return frozenset(hash(" ".join(words[i:i + size])) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def fingerprint(result: Result, keep: int | None = None,
                content: dict[tuple[str, int, str], frozenset[int] | None] | None = None) -> Fingerprint:
    """The fingerprint of a fetch, of its first `keep` body bytes if given. `content` caches the shingles of
    bodies fingerprinted before (by digest and length kept)."""
    ctype = _content_type(result.headers)
    body = b"" if keep is None else result.body[:keep]  # the whole body is read only when not seen before
    digest = result.sha256 if keep is None else hashlib.sha256(body).hexdigest()
    cache_key = (digest, result.body_size if keep is None else len(body), ctype or "")
    if content is not None and cache_key in content:
        words = content[cache_key]
    else:
        body = result.body if keep is None else body
        text = visible_text(body, ctype) if body else ""
        words = None if text is None else shingles(text)
        if content is not None:
            content[cache_key] = words
    return Fingerprint(error=result.error, status=result.status, final_url=urldefrag(result.final_url).url,
                       media_type=media_type(result.headers), shingles=words, digest=digest)


def similarity(a: Fingerprint, b: Fingerprint) -> float:
    """How alike two fetches are, 0…1: 0 when status, final URL, media type or error differ."""
    if a.error is not None or b.error is not None:
        return 1.0 if a.error == b.error else 0.0
    if (a.status, a.final_url, a.media_type) != (b.status, b.final_url, b.media_type):
        return 0.0
    if a.shingles is None or b.shingles is None:
        return 1.0 if a.digest == b.digest else 0.0
    return jaccard(a.shingles, b.shingles)


class Comparer:
    """Compares fetches of one repetition, shingling each body once (a cut body over the part both kept)."""

    def __init__(self, agree_at: float, differ_below: float) -> None:
        self.agree_at = agree_at
        self.differ_below = differ_below
        self._content: dict[tuple[str, int, str], frozenset[int] | None] = {}

    def _print(self, result: Result, keep: int | None) -> Fingerprint:
        return fingerprint(result, keep, self._content)

    def similarity(self, a: Result, b: Result) -> float:
        keep = min(a.body_size, b.body_size) if a.truncated or b.truncated else None
        return similarity(self._print(a, keep), self._print(b, keep))

    def agree(self, a: Result, b: Result) -> bool:
        return self.similarity(a, b) >= self.agree_at

    def differ(self, a: Result, b: Result) -> bool:
        """Clearly different: below the lower threshold."""
        return self.similarity(a, b) < self.differ_below
