"""The zlib dictionary of SPDY/3 header blocks (SPDY Protocol draft 3, section 2.6.10.1).

Both directions of a SPDY/3 session compress their header blocks with zlib primed with this dictionary. It is
spelled here as the draft builds it: a run of length-prefixed (32-bit big-endian) lower-case header names and
common values, followed by one string of status codes, reason phrases, dates and media types.
"""

from __future__ import annotations

_PREFIXED = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
    "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
    "content-base", "content-encoding", "content-language", "content-length", "content-location", "content-md5",
    "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host", "if-match",
    "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after",
    "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
    "keep-alive", "origin",
)

_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _build() -> bytes:
    out = bytearray()
    for word in _PREFIXED:
        raw = word.encode("ascii")
        out += len(raw).to_bytes(4, "big") + raw
    out += _TAIL.encode("ascii")
    return bytes(out)


DICTIONARY = _build()
# what a zlib stream primed with it names as its DICTID; peers refuse a block made with any other dictionary
DICTIONARY_ADLER32 = 0xE3C6A7C2
