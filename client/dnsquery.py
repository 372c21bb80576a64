"""A small, careful DNS stub: one question to one resolver, over UDP with a TCP fallback.

The pull tool depends only on ``cryptography``; the canary check needs two
questions (a TXT and an A) and the answer's status, records and flags, which
the standard library does in little code. What must stay true:

* An answer is accepted only if it comes from the address asked, carries the
  query's id, is a response (QR), and repeats the question asked; anything
  else on the socket is ignored until the timeout.
* A truncated UDP answer (TC) is asked again over TCP.
* Every length and offset is checked against the message: a malformed
  answer raises :class:`DnsError` with one sentence, never an IndexError,
  and a compression loop cannot spin (at most 64 pointers per name).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field

A, NS, CNAME, SOA, TXT, AAAA = 1, 2, 5, 6, 16, 28
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_FLAG_QR, _FLAG_AA, _FLAG_TC = 0x8000, 0x0400, 0x0200


class DnsError(Exception):
    """No usable answer; ``args[0]`` says why in one sentence."""


@dataclass(frozen=True)
class RR:
    name: str  # lower case, with the final dot
    type: int
    data: bytes  # rdata as sent
    section: str  # answer | authority | additional

    def texts(self) -> list[str]:
        """The strings of a TXT record."""
        out, i = [], 0
        while i < len(self.data):
            n = self.data[i]
            out.append(self.data[i + 1 : i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        return out

    def address(self) -> str | None:
        if (self.type == A and len(self.data) == 4) or (self.type == AAAA and len(self.data) == 16):
            return str(ipaddress.ip_address(self.data))
        return None


@dataclass(frozen=True)
class Answer:
    rcode: int
    authoritative: bool
    records: list[RR] = field(default_factory=list)

    @property
    def status(self) -> str:
        return RCODES.get(self.rcode, f"RCODE{self.rcode}")


def parse_server(text: str, default_port: int = 53) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[ADDR6]:PORT`` as (address, port); ValueError with a sentence."""
    host, port = text.strip(), default_port
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not an address: write [IPv6]:PORT")
        host, port_text = inner, rest[1:]
        if rest:
            port = _port(port_text, text)
    elif host.count(":") == 1:
        host, port_text = host.split(":")
        port = _port(port_text, text)
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (optionally with :PORT)") from None
    return address, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r} has no valid port (1-65535)")
    return int(text)


def encode_name(name: str) -> bytes:
    labels = [label for label in name.rstrip(".").split(".") if label]
    if any(len(label) > 63 for label in labels) or len(name) > 253:
        raise ValueError(f"{name!r} is too long for a DNS name")
    return b"".join(bytes([len(lb)]) + lb.encode("ascii") for lb in labels) + b"\0"


def build_query(qid: int, name: str, qtype: int) -> bytes:
    # RD set: the resolver answers from its policy, its cache or by recursion, as for any client.
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, 1)


def query(server: tuple[str, int], name: str, qtype: int, timeout: float = 3.0) -> Answer:
    """Ask ``server`` one question; DnsError if no valid answer arrives in time."""
    qid = secrets.randbelow(1 << 16)
    message = build_query(qid, name, qtype)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(server)  # a connected UDP socket takes datagrams from that address only
            s.send(message)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DnsError(f"{_show(server)} did not answer within {timeout:g} s")
                s.settimeout(left)
                data = s.recv(65535)
                try:
                    flags, answer = parse(data, qid, name, qtype)
                except _Mismatch:
                    continue  # not the answer to this question: keep waiting
                if not flags & _FLAG_TC:
                    return answer
                break
        except TimeoutError:
            raise DnsError(f"{_show(server)} did not answer within {timeout:g} s") from None
        except OSError as e:
            raise DnsError(f"cannot ask {_show(server)}: {e.strerror or e}") from None
    return _query_tcp(server, family, message, qid, name, qtype, deadline, timeout)


def _query_tcp(server: tuple[str, int], family: int, message: bytes, qid: int, name: str, qtype: int,
               deadline: float, timeout: float) -> Answer:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            s.connect(server)
            s.sendall(struct.pack("!H", len(message)) + message)
            length = struct.unpack("!H", _recv_exact(s, 2))[0]
            data = _recv_exact(s, length)
    except TimeoutError:
        raise DnsError(f"{_show(server)} did not answer over TCP within {timeout:g} s") from None
    except OSError as e:
        raise DnsError(f"cannot ask {_show(server)} over TCP: {e.strerror or e}") from None
    try:
        return parse(data, qid, name, qtype)[1]
    except _Mismatch:
        raise DnsError(f"{_show(server)} answered another question over TCP") from None


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise OSError("the connection closed early")
        out += chunk
    return bytes(out)


def _show(server: tuple[str, int]) -> str:
    return f"[{server[0]}]:{server[1]}" if ":" in server[0] else f"{server[0]}:{server[1]}"


class _Mismatch(Exception):
    pass


def parse(data: bytes, qid: int, name: str, qtype: int) -> tuple[int, Answer]:
    """(header flags, the answer) of a response to (qid, name, qtype)."""
    if len(data) < 12:
        raise _Mismatch
    rid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    if rid != qid or not flags & _FLAG_QR or qd != 1:
        raise _Mismatch
    try:
        qname, pos = _read_name(data, 12)
        if pos + 4 > len(data):
            raise DnsError("the answer is cut short")
        rtype, rclass = struct.unpack("!HH", data[pos : pos + 4])
        if qname != name.lower().rstrip(".") + "." or rtype != qtype or rclass != 1:
            raise _Mismatch
        pos += 4
        records: list[RR] = []
        if not flags & _FLAG_TC:
            for count, section in ((an, "answer"), (ns, "authority"), (ar, "additional")):
                for _ in range(count):
                    owner, pos = _read_name(data, pos)
                    if pos + 10 > len(data):
                        raise DnsError("the answer is cut short")
                    t, _c, _ttl, length = struct.unpack("!HHIH", data[pos : pos + 10])
                    pos += 10
                    if pos + length > len(data):
                        raise DnsError("a record runs past the end of the answer")
                    records.append(RR(owner, t, data[pos : pos + length], section))
                    pos += length
    except DnsError as e:
        raise DnsError(f"the answer for {name} is malformed: {e.args[0]}") from None
    return flags, Answer(flags & 0x000F, bool(flags & _FLAG_AA), records)


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    end = None
    jumps = 0
    while True:
        if pos >= len(data):
            raise DnsError("a name runs past the end")
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise DnsError("a name pointer is cut short")
            jumps += 1
            if jumps > 64:
                raise DnsError("a name has a compression loop")
            if end is None:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | data[pos + 1]
            continue
        if n & 0xC0:
            raise DnsError("a name has an unknown label type")
        if pos + 1 + n > len(data):
            raise DnsError("a label runs past the end")
        labels.append(data[pos + 1 : pos + 1 + n].decode("ascii", "replace").lower())
        pos += 1 + n
        if sum(len(x) + 1 for x in labels) > 255:
            raise DnsError("a name is longer than 255 bytes")
    return ".".join(labels) + ".", end if end is not None else pos
