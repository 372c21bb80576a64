"""An ISP's onboarding bundle: everything its engineers need, filled in.

One description of an ISP's subscription (feed URL, token, zone names,
primaries, TSIG key, the programme's public key) is rendered into the
files they install: ``pull.toml`` for the pull tool, and BIND, Unbound,
PowerDNS Recursor and Knot Resolver stanzas (from the templates in
``deploy/isp/``), with a README that says how to check the public key over a
second channel. No Flask: the web admin and the command line serve what this builds.

What must stay true:

* Secrets appear only when they are given (the feed token exists in clear
  only when it is made; it is stored hashed). Without them every place that
  needs one holds a placeholder that is plainly marked and that no resolver
  or the pull tool accepts, so a half-filled configuration fails loudly
  instead of running with a dummy secret.
* Rendering does no I/O; only ``gather`` reads the store (through a Core).
* Every file is generated from the same values, so the feed URL, zones,
  primaries and key are the same in all of them; the generated ``pull.toml``
  loads with ``client.config.load``; the BIND and Unbound files pass
  ``named-checkconf`` and ``unbound-checkconf`` once secrets are in.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from app.config import Settings
from app.isps import TSIG_ALGORITHM, Isp
from client.minisign import PublicKey

if TYPE_CHECKING:
    from app.core import Core

#: Marks every placeholder; neither BIND (bad base64), nor the pull tool
#: (not a feed token), nor a reader can mistake it for a value.
PLACEHOLDER = "@@REPLACE"
TOKEN_PLACEHOLDER = f"{PLACEHOLDER}: feed token, shown once when the ISP was added or its token rotated@@"
TSIG_PLACEHOLDER = f"{PLACEHOLDER}: TSIG secret, shown once when the ISP was added or its key rotated@@"
KEY_PLACEHOLDER = f"{PLACEHOLDER}: the programme's public key (blocklist keys show)@@"


@dataclass(frozen=True)
class Xot:
    """Zone transfers over TLS (RFC 9103) as ISPs configure them."""

    port: int
    name: str
    pin: str
    certificate: str


@dataclass(frozen=True)
class Onboarding:
    """One ISP's subscription, as its engineers configure it."""

    isp: str
    public_url: str
    list_name: str
    #: Policy zones in the order resolvers must list them (first wins), with trailing dots.
    zones: tuple[str, ...]
    primaries: tuple[tuple[str, int], ...]
    tsig_name: str
    tsig_algorithm: str
    notify: tuple[str, ...] = ()
    allow_from: tuple[str, ...] = ()
    public_key: PublicKey | None = None
    #: The next key, while a signed manifest announces it (pinned too, so a rotation needs no visit).
    next_key: PublicKey | None = None
    next_from: str | None = None
    #: No TSIG key: the ISP's addresses are the only gate (resolvers that cannot sign).
    address_only: bool = False
    xot: Xot | None = None
    feed_token: str | None = None
    tsig_secret: str | None = None
    generated_at: float = 0.0

    # ------------------------------------------------------------------ derived values

    @property
    def feed_url(self) -> str:
        return self.public_url.rstrip("/") + "/feed/v1"

    @property
    def has_secrets(self) -> bool:
        return bool(self.feed_token or self.tsig_secret)

    @property
    def token_text(self) -> str:
        return self.feed_token or TOKEN_PLACEHOLDER

    @property
    def tsig_text(self) -> str:
        return self.tsig_secret or TSIG_PLACEHOLDER

    @property
    def key_name(self) -> str:
        """The TSIG key name as resolver configurations write it (no trailing dot)."""
        return self.tsig_name.rstrip(".")

    @property
    def key_id(self) -> str | None:
        return self.public_key.id_hex if self.public_key else None

    @property
    def key_line(self) -> str:
        return self.public_key.base64() if self.public_key else KEY_PLACEHOLDER

    @property
    def key_fingerprint(self) -> str | None:
        """SHA-256 of the key line's bytes, in groups of four, to read aloud on the phone."""
        if self.public_key is None:
            return None
        digest = hashlib.sha256(self.public_key.base64().encode()).hexdigest().upper()
        return " ".join(digest[i:i + 4] for i in range(0, len(digest), 4))

    def _key_lines(self) -> list[str]:
        return [self.key_line] + ([self.next_key.base64()] if self.next_key else [])

    @property
    def folder(self) -> str:
        return f"blocklist-{self.isp}"

    def primary_list(self, sep: str = " port ") -> list[str]:
        """``ADDR<sep>PORT`` for each primary (Unbound writes ``ADDR@PORT``, IPv6 unbracketed)."""
        return [f"{h}{sep}{p}" for h, p in self.primaries]

    # ------------------------------------------------------------------ files

    def files(self) -> dict[str, str]:
        """Path inside the bundle -> text."""
        out = {
            "README.txt": self.readme(),
            "pull.toml": self.pull_toml(),
            "blocklist.pub": self.public_key.text() if self.public_key else KEY_PLACEHOLDER + "\n",
            "bind/blocklist-rpz.conf": self.bind_zones(),
            "bind/response-policy.conf": self.bind_response_policy(),
            "unbound/blocklist-rpz.conf": self.unbound(),
            "powerdns/recursor.lua": self.powerdns(),
            "knot-resolver/kresd.conf": self.knot(),
        }
        if self.next_key is not None:
            out["blocklist-next.pub"] = self.next_key.text()
        if self.xot is not None:
            out["blocklist-xot.pem"] = self.xot.certificate
        if self.feed_token:
            out["feed-token"] = self.feed_token + "\n"
        return out

    def bundle(self) -> bytes:
        """The files as a zip archive, under one folder; files holding a secret readable by their owner only."""
        buf = io.BytesIO()
        stamp = datetime.fromtimestamp(self.generated_at or 0, UTC)
        when = (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for path, text in self.files().items():
                info = zipfile.ZipInfo(f"{self.folder}/{path}", date_time=when)
                info.compress_type = zipfile.ZIP_DEFLATED
                secret = any(s and s in text for s in (self.feed_token, self.tsig_secret))
                info.external_attr = (0o600 if secret else 0o644) << 16
                z.writestr(info, text)
        return buf.getvalue()

    def readme(self) -> str:
        when = datetime.fromtimestamp(self.generated_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        zones = ", ".join(z.rstrip(".") for z in self.zones)
        lines = [
            f"Blocklist subscription of ISP {self.isp}",
            f"Generated {when} from {self.public_url}",
            "",
            "SECRETS: " + ("this bundle holds the feed token (feed-token) and the TSIG secret. Keep it where only "
                           "the resolver administrators can read it, install the files, then delete it."
                           if self.has_secrets else
                           "none are included. Every place that needs one says " + PLACEHOLDER + "...@@; put "
                           "in the values you were given when the ISP was added or its credentials rotated "
                           "(ask the programme for a rotation if they are lost)."),
            "",
            "Signed feed over HTTPS (blocklist-pull, or your own client)",
            f"  feed URL        {self.feed_url}",
            "  authentication  Authorization: Bearer <feed token>",
            f"  token in path   {self.feed_url}/t/<feed token>/rpz/latest.zone (for Unbound's url:)",
            f"  list name       {self.list_name}",
            "",
            "RPZ zone transfer (AXFR/IXFR over TCP, NOTIFY after each publication)",
            f"  zones           {zones}" + ("  (list them in this order: the first wins)" if len(self.zones) > 1
                                            else ""),
            f"  primaries       {', '.join(self.primary_list(' port '))}",
            *self._readme_auth(),
            f"  NOTIFY sent to  {', '.join(self.notify) or 'none registered (resolvers poll at the SOA refresh)'}",
            f"  transfers from  {', '.join(self.allow_from) or 'any address holding the TSIG key'}",
            *self._readme_xot(),
            "",
            "The programme's signing key (minisign)",
            f"  key id          {self.key_id or 'not known to this server yet: ask the programme'}",
            f"  public key      {self.key_line}",
            f"  fingerprint     {self.key_fingerprint or '-'}",
            *([f"  next key        {self.next_key.id_hex} {self.next_key.base64()}",
               f"                  announced by the signed manifest; signs from {self.next_from or 'a date it names'}"
               " (blocklist-next.pub; pinned in pull.toml too)"] if self.next_key else []),
            "",
            "  Check the key over a second channel before you trust it: call the programme's operations",
            "  desk on the number in your agreement (not one found in this bundle or an e-mail) and have",
            "  them read the key id and the fingerprint from `blocklist keys show` on their side. Then",
            "  every artifact verifies with the stock tool:",
            "      minisign -Vm manifest.json -p blocklist.pub",
            "  A new key is only ever announced inside a manifest signed by the current key.",
            "",
            "Files",
            "  pull.toml                   blocklist-pull (/etc/blocklist-pull/pull.toml; the token in feed-token"
            " beside it)",
            "  blocklist.pub               the public key in minisign format",
            "  bind/blocklist-rpz.conf     BIND 9: key and secondary zones (include from named.conf)",
            "  bind/response-policy.conf   BIND 9: the response-policy statement for the options block",
            "  unbound/blocklist-rpz.conf  Unbound (no TSIG: by address, or the HTTPS url: variant)",
            "  powerdns/recursor.lua       PowerDNS Recursor",
            "  knot-resolver/kresd.conf    Knot Resolver (file based)",
            "",
        ]
        return "\n".join(lines)

    def _readme_auth(self) -> list[str]:
        if self.address_only:
            return ["  TSIG            none: address-only mode (the addresses below are the only gate)"]
        return [f"  TSIG key        {self.key_name} ({self.tsig_algorithm}), required on every transfer"]

    def _readme_xot(self) -> list[str]:
        if self.xot is None:
            return []
        return [f"  over TLS (XoT)  port {self.xot.port}, certificate name {self.xot.name}",
                f"  SPKI pin        {self.xot.pin} (sha256, base64; certificate in blocklist-xot.pem)"]

    def pull_toml(self) -> str:
        token_note = ("# The feed token is in the file feed-token next to this one; keep both readable only by root."
                      if self.feed_token else
                      "# Put the feed token (blf_..., shown once when the ISP was added or its token rotated) in\n"
                      "# the file feed-token next to this one, readable only by root.")
        first_zone = self.zones[-1]
        keys = "".join(f"  {_toml(k)},\n" for k in self._key_lines())
        next_note = ("\n# The second key is the announced next key; remove the first once the next one signs."
                     if self.next_key else "")
        return f"""# blocklist-pull configuration for ISP {self.isp}: install as
# /etc/blocklist-pull/pull.toml (see docs/isp-pull.md for every setting).
# Relative paths are relative to this file.

feed_url = {_toml(self.feed_url)}

{token_note}
token_file = "feed-token"

# The programme's signing key, key id {self.key_id or "unknown"}: check it over a second channel
# (README.txt) before the first run.{next_note}
public_keys = [
{keys}]

state_dir = "/var/lib/blocklist-pull"
list = {_toml(self.list_name)}
max_version_jump = 10000

# Run after an output changed, e.g. ["rndc", "reload", "{first_zone.rstrip('.')}"] or
# ["unbound-control", "reload"].
# post_apply = ["rndc", "reload"]

[[output]]
format = "rpz"                     # a zone file for BIND/Knot/PowerDNS response-policy
path = "/var/lib/blocklist-pull/blocklist.rpz.zone"
zone = {_toml(first_zone)}
ttl = 60

# [[output]]
# format = "unbound"               # local-zone lines in a server: clause
# path = "/etc/unbound/unbound.conf.d/blocklist.conf"
"""

    def bind_zones(self) -> str:
        key = "" if self.address_only else f' key "{self.key_name}"'
        if self.xot is not None:
            tls = " tls blocklist-xot"
            primaries = " ".join(f"{h} port {self.xot.port}{key}{tls};" for h, _p in self.primaries)
            plain = " ".join(f"{h} port {p}{key};" for h, p in self.primaries)
            via = f"""    // Over TLS (XoT): the list is not readable on the wire. Without TLS:
    //   primaries {{ {plain} }};
"""
        else:
            primaries = " ".join(f"{h} port {p}{key};" for h, p in self.primaries)
            via = ""
        notifiers = " ".join(f"{h};" for h, _p in self.primaries)
        signed = ("    // Address-only mode: no TSIG key; the primaries let your registered addresses transfer.\n"
                  if self.address_only else
                  "    // Every transfer (AXFR, IXFR) and SOA check is signed with your key.\n")
        zones = "\n".join(f"""
zone "{z.rstrip('.')}" {{
    type secondary;
{signed}{via}    primaries {{ {primaries} }};
    file "{z.rstrip('.')}.db";
    // The primary NOTIFYs you within a second of each publication.
    allow-notify {{ {notifiers} }};
    request-ixfr yes;
    // The list itself is confidential: nobody queries or copies it from here.
    allow-query {{ localhost; }};
    allow-transfer {{ none; }};
}};""" for z in self.zones)
        head = f"""// Blocklist response policy zones for ISP {self.isp}, BIND 9.18.
// Include from named.conf, outside the options block:
//     include "/etc/bind/blocklist-rpz.conf";
// and put the statement of response-policy.conf inside the options block.
// The zone files are relative to BIND's directory (Debian: /var/cache/bind).
"""
        if not self.address_only:
            if not self.tsig_secret:
                head += f"// {PLACEHOLDER}: put the TSIG secret you were given in place of the marked text.\n"
            head += f"""
key "{self.key_name}" {{
    algorithm {self.tsig_algorithm};
    secret "{self.tsig_text}";
}};
"""
        if self.xot is not None:
            head += f"""
// The transfer server's certificate (blocklist-xot.pem in the bundle; SPKI
// pin {self.xot.pin}). BIND checks the name and the chain against it.
tls blocklist-xot {{
    ca-file "/etc/bind/blocklist-xot.pem";
    remote-hostname "{self.xot.name}";
}};
"""
        return head + zones + "\n"

    def bind_response_policy(self) -> str:
        zones = "\n".join(f'    zone "{z.rstrip(".")}" policy given;' for z in self.zones)
        order = ("\n// The zones are listed in the programme's order: the first match wins.\n"
                 if len(self.zones) > 1 else "")
        return f"""// Inside the options {{ ... }} block of named.conf.
// policy given: the list's answer (NXDOMAIN); for your stop page write
//   policy cname stop.isp.example.net
// min-update-interval 0 applies each new version as soon as it is transferred.{order}
response-policy {{
{zones}
}} break-dnssec yes qname-wait-recurse no min-update-interval 0;
"""

    def unbound(self) -> str:
        """Unbound cannot sign transfers: zone transfer by address for an
        address-only ISP, else the zone file over HTTPS with the token in the path."""
        stop_page = """    # Send blocked users to your own stop page instead of NXDOMAIN:
    # rpz-action-override: cname
    # rpz-cname-override: "stop.isp.example.net."
    rpz-log: yes
    rpz-log-name: "blocklist"
"""
        base = self.zones[-1].rstrip(".")
        url = f"{self.feed_url}/t/{self.token_text}/rpz/latest.zone"
        https = f"""rpz:
    name: "{base}"
    # The whole list as a zone file over HTTPS, refetched at the zone's SOA
    # refresh. The feed token is in the path because Unbound cannot send
    # headers: keep this file readable by root and unbound only.
    url: "{url}"
    zonefile: "/var/lib/unbound/{base}.zone"
{stop_page}"""
        head = f"""# Blocklist response policy zones for ISP {self.isp}, Unbound 1.14+ (tested with 1.17).
# Include from unbound.conf:   include: "/etc/unbound/blocklist-rpz.conf"

server:
    # RPZ needs the respip module in front of the iterator.
    module-config: "respip validator iterator"

"""
        if not self.address_only:
            return head.replace("\n\nserver:", f"""
#
# Released Unbound cannot sign zone transfers, and {self.isp} transfers with a
# TSIG key: this resolver takes the zone file over HTTPS instead. (To
# transfer by address, the programme registers an address-only ISP for it.)

server:""", 1) + https
        # The overlay (every zone before the base) must keep its answers as
        # published: an override would also rewrite its removals
        # (rpz-passthru) and the version canary.
        overlay_tail = """    # No rpz-action-override here: it would also rewrite the removals
    # (rpz-passthru) and the version.canary answer. Names added since the
    # last fold get the list's NXDOMAIN until they move into the base.
    rpz-log: yes
    rpz-log-name: "blocklist-overlay"
"""
        blocks = []
        for z in self.zones:
            name = z.rstrip(".")
            tail = stop_page if z == self.zones[-1] else overlay_tail
            prims = "\n".join(f"    primary: {a}" for a in self.primary_list("@"))
            notifiers = "\n".join(f"    allow-notify: {h}" for h, _p in self.primaries)
            blocks.append(f"""rpz:
    name: "{name}"
    # Zone transfer (IXFR, falling back to AXFR) from the blocklist primaries.
{prims}
{notifiers}
    zonefile: "/var/lib/unbound/{name}.zone"
{tail}""")
        registered = ", ".join(self.allow_from)
        return head.replace("\n\nserver:", f"""
#
# Address-only mode: no TSIG; the primaries let these addresses transfer:
# {registered}. Transfers from any other address are refused.

server:""", 1) + "\n".join(blocks) + f"""
# Or the zone file over HTTPS instead of the rpz: clauses above (the feed
# token goes in the path: keep this file readable by root and unbound only):
#
# rpz:
#     name: "{base}"
#     url: "{url}"
#     zonefile: "/var/lib/unbound/{base}.zone"
"""

    def powerdns(self) -> str:
        prims = ", ".join(f'"{_bracket(h)}:{p}"' for h, p in self.primaries)
        tsig = ("  -- address-only mode: no TSIG key\n" if self.address_only else
                f'  tsigname = "{self.key_name}",\n  tsigalgo = "{self.tsig_algorithm}",\n'
                f'  tsigsecret = "{self.tsig_text}",\n')
        zones = "\n".join(f"""
rpzPrimary({{{prims}}}, "{z.rstrip('.')}", {{
{tsig}  -- Your stop page for every listed name (or leave defpol out for the list's NXDOMAIN).
  -- defpol = Policy.Custom, defcontent = "stop.isp.example.net",
  policyName = "blocklist",
  refresh = 300,
  dumpFile = "/var/lib/pdns-recursor/{z.rstrip('.')}.zone",
  seedFile = "/var/lib/pdns-recursor/{z.rstrip('.')}.zone",
}})""" for z in self.zones)
        notify_from = ", ".join(h for h, _p in self.primaries)
        return f"""-- Blocklist response policy zones for ISP {self.isp}, PowerDNS Recursor 4.5+.
--
-- In recursor.conf:
--   lua-config-file=/etc/powerdns/recursor.lua
--   allow-notify-for={",".join(z.rstrip(".") for z in self.zones)}
--   allow-notify-from={notify_from}
-- Zones listed first take precedence.
{zones}
"""

    def knot(self) -> str:
        z = self.zones[-1].rstrip(".")
        host, port = self.primaries[0]
        tsig = "" if self.address_only else f"-y {self.tsig_algorithm}:{self.key_name}:{self.tsig_text} "
        return f"""-- Blocklist response policy zone for ISP {self.isp}, Knot Resolver 5 (file based).
--
-- Knot Resolver does not transfer zones itself. Keep the zone file fresh from
-- a systemd timer, either
--   * with blocklist-pull (pull.toml in this bundle writes
--     /var/lib/blocklist-pull/blocklist.rpz.zone after checking every
--     signature; point the path below at it), or
--   * with a TSIG-signed transfer into a temporary file, moved into place
--     only when complete:
--       kdig {tsig}@{host} -p {port} +tcp +noall +answer \\
--           AXFR {z} > /var/lib/knot-resolver/.blocklist.tmp &&
--       mv /var/lib/knot-resolver/.blocklist.tmp /var/lib/knot-resolver/{z}.zone
--
-- The third argument (true) makes kresd reload the file when it changes.

modules = {{ 'policy' }}

policy.add(policy.rpz(policy.DENY_MSG('blocked under the {self.list_name} blocking programme'),
                      '/var/lib/knot-resolver/{z}.zone', true))
"""


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _toml(text: str) -> str:
    """A TOML basic string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def zones_in_order(base: str, overlay: str | None) -> tuple[str, ...]:
    """The policy zones ISPs list, first match first."""
    return (overlay, base) if overlay and overlay != base else (base,)


def primaries_text(primaries: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{_bracket(h)}:{p}" for h, p in primaries)


def for_isp(settings: Settings, isp: Isp, *, now: float, public_key: PublicKey | None = None,
            next_key: PublicKey | None = None, next_from: str | None = None, xot: Xot | None = None,
            feed_token: str | None = None, tsig_secret: str | None = None) -> Onboarding:
    """The onboarding of ``isp`` under these settings; secrets only when given."""
    overlay = getattr(settings, "rpz_overlay_zone", None)
    return Onboarding(
        isp=isp.name, public_url=settings.public_url, list_name=settings.list_name,
        zones=zones_in_order(settings.rpz_zone, overlay if isinstance(overlay, str) else None),
        primaries=settings.dns_primaries, tsig_name=isp.tsig_name, tsig_algorithm=TSIG_ALGORITHM,
        notify=tuple(isp.notify), allow_from=tuple(isp.allow_from), public_key=public_key,
        next_key=next_key, next_from=next_from, address_only=isp.address_only, xot=xot,
        feed_token=feed_token, tsig_secret=None if isp.address_only else tsig_secret, generated_at=now,
    )


def gather(core: Core, name: str, *, feed_token: str | None = None, tsig_secret: str | None = None) -> Onboarding:
    """The onboarding of ISP ``name`` as the store describes it now: the
    programme's keys as recorded (what ``blocklist keys show`` prints), XoT
    once a transfer server has served its certificate. The one function here
    that reads anything, through ``core``."""
    from app.keys import Keyring
    from app.xot import spki_pin

    rec = Keyring(core.store, core.settings.signing_key_file, core.clock).record()
    xot = None
    pem = core.store.isps.xot_cert()
    if pem is not None and core.settings.xot_listen is not None:
        xot = Xot(port=core.settings.xot_listen[1], name=core.settings.xot_name, pin=spki_pin(pem), certificate=pem)
    return for_isp(
        core.settings, core.isps.get(name), now=core.clock(),
        public_key=rec.current.public() if rec else None,
        next_key=rec.next.public() if rec and rec.next else None, next_from=rec.next_from if rec else None,
        xot=xot, feed_token=feed_token, tsig_secret=tsig_secret)
