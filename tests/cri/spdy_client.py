"""A small SPDY/3.1 client for tests, written from the protocol (the SPDY/3 draft and the Kubernetes streaming
conventions), independent of crisp's own framing code: HTTP upgrade, SYN_STREAM/SYN_REPLY, DATA with FIN,
RST_STREAM, PING, GOAWAY, zlib header blocks with the SPDY/3 dictionary. Blocking sockets and one reader thread;
`pause_reading()` stops the reader so that TCP backpressure reaches the server (a slow client)."""

from __future__ import annotations

import json
import queue
import socket
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# the SPDY/3 header dictionary: length-prefixed words, then a literal tail
_WORDS = ("options head post put delete trace accept accept-charset accept-encoding accept-language "
          "accept-ranges age allow authorization cache-control connection content-base content-encoding "
          "content-language content-length content-location content-md5 content-range content-type date etag "
          "expect expires from host if-match if-modified-since if-none-match if-range if-unmodified-since "
          "last-modified location max-forwards pragma proxy-authenticate proxy-authorization range referer "
          "retry-after server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
          "method get status 200|OK version HTTP/1.1 url public set-cookie keep-alive origin").split()
_TAIL = (b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 "
         b"Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 "
         b"Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar "
         b"Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,"
         b"image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,public"
         b"privatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.replace("|", " ").encode() for w in _WORDS) + _TAIL
assert zlib.adler32(DICTIONARY) == 0xE3C6A7C2, "the SPDY/3 dictionary is misspelled"

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FIN = 1
CANCEL = 5


class UpgradeRefused(Exception):
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.headers = headers
        self.body = body

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class ClientStream:
    client: SpdyClient
    id: int
    headers: dict[str, str]
    replied: threading.Event = field(default_factory=threading.Event)
    refused: bool = False
    chunks: queue.Queue[bytes | None] = field(default_factory=queue.Queue)
    reset_status: int = 0

    def write(self, data: bytes) -> None:
        self.client.send_data(self.id, data)

    def close(self) -> None:
        self.client.send_data(self.id, b"", fin=True)

    def reset(self) -> None:
        self.client.send_raw(_control(RST_STREAM, 0, struct.pack(">II", self.id, CANCEL)))

    def read(self, timeout: float = 60) -> bytes | None:
        """The next chunk; None at FIN/reset."""
        return self.chunks.get(timeout=timeout)

    def read_all(self, timeout: float = 60) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + timeout
        while (chunk := self.chunks.get(timeout=max(deadline - time.monotonic(), 0.01))) is not None:
            out += chunk
        self.chunks.put(None)
        return bytes(out)

    def read_until(self, marker: bytes, timeout: float = 30) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + timeout
        while marker not in out:
            chunk = self.chunks.get(timeout=max(deadline - time.monotonic(), 0.01))
            if chunk is None:
                raise EOFError(f"stream {self.id} ended before {marker!r}: {bytes(out)!r}")
            out += chunk
        return bytes(out)


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | 3, frame_type, (flags << 24) | len(payload)) + payload


class SpdyClient:
    def __init__(self, url: str, protocols: tuple[str, ...] = ("v4.channel.k8s.io",), method: str = "POST",
                 upgrade: bool = True, timeout: float = 30, tls: ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        """`tls` (with `server_hostname`, the name the server's certificate must carry) for an https URL."""
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https") and parts.hostname and parts.port, url
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        if parts.scheme == "https":
            assert tls is not None, url
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname or parts.hostname)
        self.sock.settimeout(None)
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "User-Agent: crisp-test"]
        if upgrade:
            lines += ["Connection: Upgrade", "Upgrade: SPDY/3.1"]
        lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
        lines += ["Content-Length: 0", "", ""]
        self.sock.sendall("\r\n".join(lines).encode())
        head, rest = self._read_head()
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.response_headers = [(k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in header_lines)]
        if self.status != 101:
            length = int(next((v for k, v in self.response_headers if k.lower() == "content-length"), "0"))
            body = rest
            while len(body) < length:
                more = self.sock.recv(65536)
                if not more:
                    break
                body += more
            self.sock.close()
            raise UpgradeRefused(self.status, self.response_headers, body)
        self.protocol = next((v for k, v in self.response_headers if k.lower() == "x-stream-protocol-version"), "")
        self._deflate = zlib.compressobj(zdict=DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._send_lock = threading.Lock()
        self._next_id = 1
        self.streams: dict[int, ClientStream] = {}
        self.goaway: int | None = None
        self.closed = threading.Event()
        self.pongs: queue.Queue[int] = queue.Queue()
        self._reading = threading.Event()
        self._reading.set()
        self._buffer = bytearray(rest)
        self._thread = threading.Thread(target=self._read_loop, daemon=True)
        self._thread.start()

    def _read_head(self) -> tuple[bytes, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            more = self.sock.recv(4096)
            if not more:
                raise EOFError(f"the server closed the connection: {data!r}")
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    # --- sending ---------------------------------------------------------------------------------------------

    def send_raw(self, frame: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(frame)

    def send_data(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        for start in range(0, max(len(data), 1), 65536):
            chunk = data[start:start + 65536]
            last = start + 65536 >= len(data)
            flags = FIN if fin and last else 0
            self.send_raw(struct.pack(">II", stream_id, (flags << 24) | len(chunk)) + chunk)

    def _header_block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for name, value in headers.items():
            raw += struct.pack(">I", len(name)) + name.lower().encode() + struct.pack(">I", len(value)) + value.encode()
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def open(self, headers: dict[str, str], wait: bool = True) -> ClientStream:
        with self._send_lock:
            stream_id = self._next_id
            self._next_id += 2
            stream = self.streams[stream_id] = ClientStream(self, stream_id, headers)
            payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + self._header_block(headers)
            self.sock.sendall(_control(SYN_STREAM, 0, payload))
        if wait:
            assert stream.replied.wait(30), f"no SYN_REPLY for stream {stream_id}"
        return stream

    def ping(self, ping_id: int = 1) -> int:
        self.send_raw(_control(PING, 0, struct.pack(">I", ping_id)))
        return self.pongs.get(timeout=30)

    def settings_and_window_update(self) -> None:
        self.send_raw(_control(SETTINGS, 0, struct.pack(">III", 1, 7, 65536)))
        self.send_raw(_control(WINDOW_UPDATE, 0, struct.pack(">II", 0, 65536)))

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def close(self) -> None:
        try:
            self.send_raw(_control(GOAWAY, 0, struct.pack(">II", 0, 0)))
        except OSError:
            pass
        self.abort()

    def abort(self) -> None:
        """Go away without a word (a client killed mid-stream)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reading.set()
        self._thread.join(10)

    # --- receiving ---------------------------------------------------------------------------------------------

    def _recv_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._reading.wait()
            more = self.sock.recv(256 * 1024)
            if not more:
                raise EOFError
            self._buffer += more
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _read_loop(self) -> None:
        try:
            while True:
                first, second = struct.unpack(">II", self._recv_exactly(8))
                flags, length = second >> 24, second & 0xFFFFFF
                payload = self._recv_exactly(length)
                if first & 0x80000000:
                    self._on_control(first & 0xFFFF, flags, payload)
                else:
                    stream = self.streams.get(first & 0x7FFFFFFF)
                    if stream is not None:
                        if payload:
                            stream.chunks.put(payload)
                        if flags & FIN:
                            stream.chunks.put(None)
        except (EOFError, OSError):
            pass
        finally:
            for stream in self.streams.values():
                stream.replied.set()
                stream.chunks.put(None)
            self.closed.set()

    def _on_control(self, frame_type: int, flags: int, payload: bytes) -> None:
        if frame_type == SYN_REPLY:
            (stream_id,) = struct.unpack_from(">I", payload)
            self._inflate.decompress(payload[4:])
            stream = self.streams[stream_id]
            stream.replied.set()
            if flags & FIN:
                stream.chunks.put(None)
        elif frame_type == RST_STREAM:
            stream_id, status = struct.unpack(">II", payload)
            stream = self.streams[stream_id]
            stream.reset_status = status
            stream.refused = not stream.replied.is_set()
            stream.replied.set()
            stream.chunks.put(None)
        elif frame_type == PING:
            self.pongs.put(struct.unpack(">I", payload)[0])
        elif frame_type == GOAWAY:
            self.goaway = struct.unpack(">II", payload)[1]
        elif frame_type == HEADERS:
            self._inflate.decompress(payload[4:])


# --- the Kubernetes remote command protocol on top -----------------------------------------------------------------


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    status: dict[str, Any]


def open_remote_command(url: str, stdin: bool, stdout: bool, stderr: bool, tty: bool,
                        protocols: tuple[str, ...] = ("v4.channel.k8s.io",), **connect: Any
                        ) -> tuple[SpdyClient, dict[str, ClientStream]]:
    """Upgrade and open the streams the way client-go does (error first); `connect` goes to SpdyClient."""
    client = SpdyClient(url, protocols, **connect)
    streams = {"error": client.open({"streamType": "error"})}
    for name, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        if wanted:
            streams[name] = client.open({"streamType": name})
    if tty and client.protocol in ("v4.channel.k8s.io", "v3.channel.k8s.io"):
        streams["resize"] = client.open({"streamType": "resize"})
    return client, streams


def send_resize(streams: dict[str, ClientStream], width: int, height: int) -> None:
    streams["resize"].write(json.dumps({"Width": width, "Height": height}).encode())


def finish(client: SpdyClient, streams: dict[str, ClientStream], timeout: float = 60) -> ExecResult:
    """Read the outputs to their end, then the status; close."""
    out = streams["stdout"].read_all(timeout) if "stdout" in streams else b""
    err = streams["stderr"].read_all(timeout) if "stderr" in streams else b""
    raw = streams["error"].read_all(timeout)
    client.close()
    if client.protocol == "v4.channel.k8s.io":
        status = json.loads(raw)
    else:
        status = {"status": "Failure", "message": raw.decode()} if raw else {"status": "Success"}
    return ExecResult(out, err, status)


def exit_code(status: dict[str, Any]) -> int:
    if status["status"] == "Success":
        return 0
    assert status["reason"] == "NonZeroExitCode", status
    return int(status["details"]["causes"][0]["message"])
