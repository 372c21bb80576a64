"""The ``blocklist`` command.

Every command reads the same settings as the services (``BLOCKLIST_*``
variables, see ``deploy/env.example``). Without ``BLOCKLIST_REDIS_URL`` the
commands use the embedded Redis of ``--data-dir``: the one a running
``blocklist serve`` started, or one started just for the command.

No command but the first start of ``serve`` creates a data directory or an
embedded store, and only ``serve`` (first start) and ``keys init`` make a
signing key: a command pointed at a data directory that holds no store, or
at a Redis that holds no programme, says what it expected and exits 1.
Only the publisher signs: ``publish`` asks it and waits for its answer.

User mistakes end with one sentence on stderr and a non-zero exit status:
1 for a refused or failed action, 2 for a malformed command line.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import click
import redis

from app.config import Settings, parse_hostport
from app.core import Core
from app.domain import Actor, Role
from app.embedded import EmbeddedRedis
from app.errors import BlocklistError, ConfigError
from app.publishing import no_publisher_message

EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"blocklist: {message}", err=True)
    sys.exit(code)


def cli_actor() -> Actor:
    """Operators with shell access act as an admin; the audit log names their Unix account."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = str(os.getuid())
    return Actor(name=f"cli:{who}", role=Role.ADMIN, agency="operator", system=True)


class Context:
    def __init__(self, data_dir: str | None) -> None:
        self._settings: Settings | None = None
        self.data_dir = data_dir
        self._core: Core | None = None
        self._stack = contextlib.ExitStack()

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            s = Settings.from_env()
            if self.data_dir:
                s = s.with_data_dir(Path(self.data_dir))
            self._settings = s
        return self._settings

    @property
    def redis_dir(self) -> Path:
        return self.settings.data_dir / "redis"

    def core(self, *, programme: bool = True) -> Core:
        """The service objects; with ``programme``, refuse a store that holds none."""
        if self._core is None:
            s = self.settings
            if s.redis_url:
                where = f"the Redis at {shown_url(s.redis_url)}"
            else:
                s = replace(s, redis_url=self._embedded_url())
                where = f"the store in {s.data_dir.resolve()}"
            core = Core.from_settings(s)
            core.store.ping()
            if programme and core.store.programme_keys.raw() is None and not core.users.exists_any():
                fail(f"{where} holds no blocklist programme (no signing key recorded, no users): check "
                     "BLOCKLIST_REDIS_URL or --data-dir (`blocklist serve` makes a programme on first start, "
                     "`blocklist keys init` on a new Redis)")
            self._core = core
        return self._core

    def _embedded_url(self) -> str:
        data_dir = self.settings.data_dir.resolve()
        if not data_dir.is_dir():
            fail(f"there is no data directory {data_dir}: give --data-dir or BLOCKLIST_DATA_DIR, set "
                 "BLOCKLIST_REDIS_URL, or run `blocklist serve` once to make one")
        if not (self.redis_dir / "redis.conf").is_file():
            fail(f"{data_dir} holds no blocklist store (no {self.redis_dir / 'redis.conf'}): give the data "
                 "directory of a `blocklist serve`, or set BLOCKLIST_REDIS_URL")
        server = EmbeddedRedis(self.redis_dir)
        if server.socket_path.exists():
            try:
                redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()
                return server.url
            except redis.exceptions.RedisError:
                pass
        server.start()
        self._stack.callback(server.stop)
        return server.url

    def close(self) -> None:
        self._stack.close()


pass_ctx = click.make_pass_decorator(Context)


def shown_url(url: str) -> str:
    """A Redis URL as it may be printed: without its password."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "BLOCKLIST_REDIS_URL"
    return url


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the embedded Redis, keys and artifacts live (default ./var or BLOCKLIST_DATA_DIR).")
@click.version_option(package_name="blocklist")
@click.pass_context
def cli(ctx: click.Context, data_dir: str | None) -> None:
    """Blocklist distribution service: curate, publish and serve a signed blocklist."""
    obj = Context(data_dir)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


# --------------------------------------------------------------------------- serve


def _child_env(settings: Settings, redis_url: str, secret_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "BLOCKLIST_REDIS_URL": redis_url,
        "BLOCKLIST_DATA_DIR": str(settings.data_dir.resolve()),
        "BLOCKLIST_ARTIFACT_DIR": str(settings.artifact_dir.resolve()),
        "BLOCKLIST_SIGNING_KEY_FILE": str(settings.signing_key_file.resolve()),
        "BLOCKLIST_SECRET_KEY_FILE": str(secret_file.resolve()),
        "BLOCKLIST_WEB_LISTEN": f"{settings.web_listen[0]}:{settings.web_listen[1]}",
        "BLOCKLIST_DNS_LISTEN": f"{settings.dns_listen[0]}:{settings.dns_listen[1]}",
        "BLOCKLIST_PUBLIC_URL": settings.public_url,
        "BLOCKLIST_XOT_NAME": settings.xot_name,
    })
    if settings.xot_listen is not None:
        env["BLOCKLIST_XOT_LISTEN"] = f"[{settings.xot_listen[0]}]:{settings.xot_listen[1]}" \
            if ":" in settings.xot_listen[0] else f"{settings.xot_listen[0]}:{settings.xot_listen[1]}"
    env.pop("BLOCKLIST_SECRET_KEY", None)
    if "BLOCKLIST_COOKIE_SECURE" not in os.environ and settings.public_url.startswith("http://"):
        # A plain-HTTP local run: a Secure cookie would never be sent back.
        env["BLOCKLIST_COOKIE_SECURE"] = "false"
    return env


def _components() -> list[tuple[str, list[str]]]:
    """The processes of one installation, each run as its own ``blocklist`` command."""
    base = [sys.executable, "-m", "app.cli"]
    return [("web", [*base, "web"]), ("worker", [*base, "worker"]), ("xfrd", [*base, "xfrd"])]


@cli.command()
@click.option("--web", "web_addr", default=None, metavar="HOST:PORT", help="Web listen address (127.0.0.1:8000).")
@click.option("--dns", "dns_addr", default=None, metavar="HOST:PORT", help="DNS listen address (127.0.0.1:8053).")
@click.option("--xot", "xot_addr", default=None, metavar="HOST:PORT",
              help="Also serve zone transfers over TLS 1.3 (XoT, RFC 9103) here; off by default.")
@click.option("--data-dir", "serve_data_dir", type=click.Path(file_okay=False), default=None,
              help="Data directory (default ./var).")
@pass_ctx
def serve(ctx: Context, web_addr: str | None, dns_addr: str | None, xot_addr: str | None,
          serve_data_dir: str | None) -> None:
    """Run everything on this machine: embedded Redis, web, publisher, DNS transfer server."""
    if serve_data_dir:
        ctx.data_dir = serve_data_dir
        ctx._settings = None
    s = ctx.settings
    changes: dict[str, Any] = {}
    if web_addr:
        changes["web_listen"] = parse_hostport(web_addr, "--web")
        if "BLOCKLIST_PUBLIC_URL" not in os.environ:
            host, port = changes["web_listen"]
            shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
            changes["public_url"] = f"http://{shown}:{port}"
    if dns_addr:
        changes["dns_listen"] = parse_hostport(dns_addr, "--dns")
    if xot_addr:
        changes["xot_listen"] = parse_hostport(xot_addr, "--xot")
    if changes:
        s = replace(s, **changes)
        ctx._settings = s
    s.data_dir.mkdir(parents=True, exist_ok=True)
    embedded: EmbeddedRedis | None = None
    redis_url = s.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(ctx.redis_dir)
        if embedded.socket_path.exists():
            try:
                redis.Redis.from_url(embedded.url, socket_connect_timeout=1).ping()
                fail(f"another blocklist serve is already running on {s.data_dir}")
            except redis.exceptions.RedisError:
                pass
        click.echo(f"starting embedded Redis ({embedded.binary}) in {ctx.redis_dir}")
        redis_url = embedded.start()
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    exit_code = 0
    try:
        from app import bootstrap

        s = replace(s, redis_url=redis_url)
        ctx._settings = s
        core = Core.from_settings(s)
        _programme_key(core)
        secret_file = bootstrap.ensure_secret_file(s.data_dir / "secret_key")
        first = bootstrap.first_start(core)
        xot_pin = None
        if s.xot_listen is not None:  # made here, before the transfer server starts and reads it
            from app.xot import ensure_certificate

            xot_pin = ensure_certificate(s).pin
        env = _child_env(s, redis_url, secret_file)
        for name, argv in _components():
            children.append((name, subprocess.Popen(argv, env=env, start_new_session=True)))
        host, port = s.web_listen
        click.echo(f"web admin:  {s.public_url}/   (API {s.public_url}/api/v1, feed {s.public_url}/feed/v1)")
        click.echo(f"DNS (RPZ):  {s.dns_listen[0]} port {s.dns_listen[1]}, zones {s.rpz_overlay_zone} "
                   f"(overlay, list it first) and {s.rpz_zone}")
        if s.xot_listen is not None:
            click.echo(f"XoT (TLS):  {s.xot_listen[0]} port {s.xot_listen[1]}, name {s.xot_name}, "
                       f"SPKI pin {xot_pin} (certificate: blocklist xot cert)")
        if first.admin_password:
            click.echo("")
            click.echo("first start: an admin account was created. Sign in with")
            click.echo(f"  user:     admin\n  password: {first.admin_password}")
            click.echo("  (temporary: the first sign-in asks you to choose your own)")
            click.echo("and change the password; it is not shown again.")
        if first.allowlist_seeded:
            click.echo(f"first start: the never-block allowlist was seeded with {first.allowlist_seeded} names.")
        click.echo("press Ctrl-C to stop")
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    click.echo(f"blocklist: the {name} process exited with status {proc.returncode}; stopping",
                               err=True)
                    stopping = True
                    exit_code = 1
            time.sleep(0.2)
    finally:
        for _name, proc in reversed(children):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in children:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if embedded is not None:
            embedded.stop()
        click.echo("stopped")
    sys.exit(exit_code)


def _programme_key(core: Core) -> None:
    """First start records (and if need be makes) the programme's key; later
    starts need this host's copy of the key the store names."""
    from app.domain import SYSTEM
    from app.keys import Keyring

    ring = Keyring(core.store, core.settings.signing_key_file, core.clock)
    rec = ring.record()
    if rec is None:
        rec, made = ring.init(SYSTEM, "first start of blocklist serve")
        if made:
            click.echo(f"first start: made the signing key {rec.current.key_id} ({core.settings.signing_key_file})")
        else:
            click.echo(f"recorded the signing key {rec.current.key_id} ({core.settings.signing_key_file}) "
                       "as the programme's key")
        return
    if ring.local_key(rec.current.key_id) is None:
        fail(f"the programme's signing key {rec.current.key_id} is not in {core.settings.signing_key_file}: "
             "copy the programme's key file there (serve never makes a second key)")


@cli.command()
@pass_ctx
def web(ctx: Context) -> None:
    """Run the web tier (gunicorn) on BLOCKLIST_WEB_LISTEN."""
    from app.web.server import run

    run(ctx.settings)


# --------------------------------------------------------------------------- users


@cli.group()
def user() -> None:
    """Curator accounts."""


@user.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--agency", required=True,
              help="The person's agency, as listed by `blocklist user agency list` (add one there first).")
@click.option("--password-stdin", is_flag=True, help="Read a password from stdin (else none: API token only).")
@pass_ctx
def user_add(ctx: Context, name: str, role: str, agency: str, password_stdin: bool) -> None:
    """Add an account. A password given here is temporary: it must be changed at first sign-in."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    u = ctx.core().users.add(cli_actor(), name, role, agency, password)
    click.echo(f"added {u.name} ({u.role}, {u.agency})")


@user.command("token")
@click.argument("name")
@pass_ctx
def user_token(ctx: Context, name: str) -> None:
    """Print a new API token for NAME (the old one stops working)."""
    click.echo(ctx.core().users.issue_token(cli_actor(), name))


@user.command("disable")
@click.argument("name")
@click.option("--reason", default="")
@pass_ctx
def user_disable(ctx: Context, name: str, reason: str) -> None:
    """Disable an account at once (its sessions and token stop working)."""
    ctx.core().users.set_disabled(cli_actor(), name, True, reason)
    click.echo(f"disabled {name}")


@user.command("enable")
@click.argument("name")
@click.option("--reason", default="")
@pass_ctx
def user_enable(ctx: Context, name: str, reason: str) -> None:
    """Enable a disabled account."""
    ctx.core().users.set_disabled(cli_actor(), name, False, reason)
    click.echo(f"enabled {name}")


@user.command("unlock")
@click.argument("name")
@pass_ctx
def user_unlock(ctx: Context, name: str) -> None:
    """Unlock an account locked after failed sign-ins."""
    ctx.core().users.unlock(cli_actor(), name)
    click.echo(f"unlocked {name}")


@user.command("password")
@click.argument("name")
@pass_ctx
def user_password(ctx: Context, name: str) -> None:
    """Set a temporary password, read from stdin (to be changed at the next sign-in;
    a lock-out stays until `user unlock`)."""
    password = sys.stdin.readline().rstrip("\n")
    ctx.core().users.set_password(cli_actor(), name, password, "set on the command line")
    click.echo(f"password of {name} set; {name} must choose a new one at the next sign-in")


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def user_list(ctx: Context, as_json: bool) -> None:
    """List accounts."""
    users = ctx.core().users.list()
    if as_json:
        click.echo(json.dumps([u.public() for u in users], indent=2))
        return
    for u in users:
        state = "disabled" if u.disabled else ("locked" if u.locked else "active")
        click.echo(f"{u.name:20} {u.role!s:8} {state:8} {u.agency}")


@user.group("agency")
def user_agency() -> None:
    """The agencies accounts pick from (approval needs a vetter of another agency)."""


@user_agency.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def user_agency_list(ctx: Context, as_json: bool) -> None:
    """List agencies, retired ones included."""
    agencies = ctx.core().users.agencies()
    if as_json:
        click.echo(json.dumps([a.public() for a in agencies], indent=2))
        return
    for a in agencies:
        click.echo(f"{a.name}{'  (retired)' if a.retired else ''}{'' if a.id == a.name else f'  [id: {a.id}]'}")


@user_agency.command("add")
@click.argument("name")
@click.option("--reason", default="")
@pass_ctx
def user_agency_add(ctx: Context, name: str, reason: str) -> None:
    """Add an agency to the list."""
    a = ctx.core().users.add_agency(cli_actor(), name, reason)
    click.echo(f"added agency {a.name}")


@user_agency.command("rename")
@click.argument("agency")
@click.argument("new_name")
@click.option("--reason", default="")
@pass_ctx
def user_agency_rename(ctx: Context, agency: str, new_name: str, reason: str) -> None:
    """Rename AGENCY (its id or name); its people keep it."""
    users = ctx.core().users
    a = users.rename_agency(cli_actor(), users.resolve_agency(agency, include_retired=True), new_name, reason)
    click.echo(f"agency {a.id} is now called {a.name}")


@user_agency.command("retire")
@click.argument("agency")
@click.option("--reason", default="")
@pass_ctx
def user_agency_retire(ctx: Context, agency: str, reason: str) -> None:
    """Retire AGENCY: nobody new can be given it; its people keep it."""
    users = ctx.core().users
    a = users.retire_agency(cli_actor(), users.resolve_agency(agency), reason)
    click.echo(f"agency {a.name} retired")


# --------------------------------------------------------------------------- allowlist


@cli.group()
def allowlist() -> None:
    """The never-block allowlist."""


@allowlist.command("add")
@click.argument("domain")
@click.option("--subdomains", is_flag=True, help="Protect every name under DOMAIN too.")
@click.option("--reason", default="")
@pass_ctx
def allowlist_add(ctx: Context, domain: str, subdomains: bool, reason: str) -> None:
    """Never block DOMAIN (nor its parents). Conflicting active entries are suspended."""
    suspended = ctx.core().curation.allowlist_add(cli_actor(), domain, subdomains, reason)
    click.echo(f"added {domain} to the allowlist")
    if suspended:
        click.echo(f"suspended conflicting entries: {', '.join(map(str, suspended))}")


@allowlist.command("remove")
@click.argument("domain")
@click.option("--reason", default="")
@pass_ctx
def allowlist_remove(ctx: Context, domain: str, reason: str) -> None:
    """Remove DOMAIN from the allowlist."""
    ctx.core().curation.allowlist_remove(cli_actor(), domain, reason)
    click.echo(f"removed {domain} from the allowlist")


@allowlist.command("list")
@pass_ctx
def allowlist_list(ctx: Context) -> None:
    """Show the allowlist."""
    for item in ctx.core().curation.allowlist():
        scope = "+subdomains" if item.subdomains else "exact"
        click.echo(f"{item.domain:40} {scope:12} {item.reason}")


# --------------------------------------------------------------------------- import


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


@cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--as", "as_user", default="admin", show_default=True,
              help="Account the entries are submitted by (a second person approves them).")
@click.option("--subdomains/--exact", default=None,
              help="Default scope of domain entries when the file does not say (default: with subdomains).")
@click.option("--category", default=None)
@click.option("--reason", default="", help="Reason recorded for every line without its own.")
@click.option("--dry-run", is_flag=True, help="Check every line; change nothing.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the refused lines as CSV (line,value,reason).")
@pass_ctx
def import_cmd(ctx: Context, file: Path, as_user: str, subdomains: bool | None, category: str | None,
               reason: str, dry_run: bool, report_path: Path | None) -> None:
    """Import FILE: CSV with a 'value' header column, or one value a line."""
    from app.curation import parse_import

    core = ctx.core()
    submitter = core.users.get(as_user)
    if submitter.disabled:
        fail(f"the account {as_user} is disabled")
    total = _count_lines(file)
    try:
        with file.open(encoding="utf-8-sig") as f, click.progressbar(
            length=total, label=f"{'checking' if dry_run else 'importing'} {file.name}",
            file=sys.stderr, show_pos=True,
        ) as bar:
            rep = core.curation.import_rows(
                submitter.actor, parse_import(f), source=file.name, default_subdomains=subdomains,
                default_category=category, default_reason=reason, dry_run=dry_run, progress=bar.update,
            )
    except UnicodeDecodeError:
        fail(f"{file} is not UTF-8 text")
    verb = "would be accepted" if dry_run else "accepted (pending approval)"
    click.echo(f"{rep.accepted} {verb}, {len(rep.refused)} refused")
    for line, value, why in rep.refused[:1000]:
        click.echo(f"  line {line}: {value}: {why}")
    if len(rep.refused) > 1000:
        click.echo(f"  ... and {len(rep.refused) - 1000} more")
    if report_path:
        import csv

        with report_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["line", "value", "reason"])
            w.writerows(rep.refused)
    if rep.refused and rep.accepted == 0:
        sys.exit(EXIT_FAILED)


# --------------------------------------------------------------------------- audit


@cli.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@pass_ctx
def audit_verify(ctx: Context) -> None:
    """Check the whole chain; name every altered, removed or reordered record."""
    from app import audit as audit_mod

    result = audit_mod.verify(ctx.core().store)
    if result.ok:
        click.echo(result.summary())
        return
    click.echo(result.summary(), err=True)
    for p in result.problems:
        click.echo(f"  {p}", err=True)
    sys.exit(EXIT_FAILED)


@audit.command("show")
@click.option("--limit", default=20, show_default=True)
@click.option("--actor", default=None)
@click.option("--action", default=None)
@click.option("--target", default=None)
@pass_ctx
def audit_show(ctx: Context, limit: int, actor: str | None, action: str | None, target: str | None) -> None:
    """Print the newest audit records as JSON lines."""
    from app import audit as audit_mod

    records, _ = audit_mod.search(ctx.core().store, actor=actor, action=action, target=target, limit=limit)
    for r in records:
        click.echo(json.dumps(r.to_dict(), ensure_ascii=False))


# --------------------------------------------------------------------------- settings


@cli.group("settings")
def settings_group() -> None:
    """Curation policy settings that admins may change at run time."""


@settings_group.command("show")
@pass_ctx
def settings_show(ctx: Context) -> None:
    click.echo(json.dumps(ctx.core().curation.policy().to_dict(), indent=2))


@settings_group.command("set")
@click.argument("name")
@click.argument("value")
@click.option("--reason", default="")
@pass_ctx
def settings_set(ctx: Context, name: str, value: str, reason: str) -> None:
    p = ctx.core().curation.set_policy(cli_actor(), {name: value}, reason)
    click.echo(json.dumps(p.to_dict(), indent=2))


# --------------------------------------------------------------------------- processes


@cli.command()
@pass_ctx
def worker(ctx: Context) -> None:
    """Run the scheduled publisher (APScheduler)."""
    from workers.scheduler import main as worker_main

    worker_main(ctx.settings)


@cli.command()
@click.option("--xot", "xot_addr", default=None, metavar="HOST:PORT",
              help="Also serve zone transfers over TLS 1.3 (RFC 9103) here (BLOCKLIST_XOT_LISTEN).")
@pass_ctx
def xfrd(ctx: Context, xot_addr: str | None) -> None:
    """Run the DNS transfer server (RPZ over AXFR/IXFR with TSIG, NOTIFY; XoT with --xot)."""
    from workers.xfrd import main as xfrd_main

    s = ctx.settings
    if xot_addr:
        s = replace(s, xot_listen=parse_hostport(xot_addr, "--xot"))
    xfrd_main(s)


# --------------------------------------------------------------------------- publication


def _print_outcome(outcome: dict[str, Any]) -> None:
    status = outcome.get("status")
    version = outcome.get("version")
    if status == "published":
        c = outcome.get("changes") or {}
        click.echo(f"published version {version} (+{c.get('added', 0)} -{c.get('removed', 0)} "
                   f"~{c.get('changed', 0)})")
        click.echo(str(version))
    elif status == "held":
        fail(f"publication held, not published: {outcome.get('message')}. "
             "An admin can release it: blocklist publications release --reason ...")
    elif status in ("unchanged", "refreshed"):
        if version:
            click.echo(f"{outcome.get('message')}; version {version} stays current")
            click.echo(str(version))
        else:
            click.echo("the list is empty and nothing has been published yet: approve an entry first")
    else:
        fail(str(outcome.get("message") or f"the publisher answered {status}"))


#: How long ``publish`` waits for a publisher that took the request to finish.
PUBLISH_RUN_LIMIT = 1800


def _ask_publisher(core: Core, reason: str, timeout: int | None, *, force: bool = False,
                   full: bool = False) -> dict[str, Any]:
    """Queue a publish request and wait for the publisher's answer."""
    pub = core.publisher
    limit = timeout or core.settings.publish_answer_timeout
    request_id = pub.request(cli_actor(), reason, force=force, full=full, timeout=limit)
    started = time.monotonic()
    while True:
        result = pub.answer(request_id, timeout=limit)
        if result is None:
            fail("the publication request was lost (was the store flushed?)")
        status = result.get("status")
        if status == "unanswered":
            fail(no_publisher_message(limit))
        if status not in ("requested", "working"):
            return result
        if time.monotonic() - started > PUBLISH_RUN_LIMIT:
            fail(f"the publisher took the request but gave no answer within {PUBLISH_RUN_LIMIT // 60} min; "
                 "see the worker's log")
        time.sleep(0.2)


@cli.command()
@click.option("--force", is_flag=True, help="Publish a new version even if nothing changed.")
@click.option("--full", is_flag=True, help="Rebuild from every entry instead of the change feed.")
@click.option("--reason", default="")
@click.option("--timeout", type=click.IntRange(1, 3600), default=None, metavar="SECONDS",
              help="How long to wait for a publisher to take the request (BLOCKLIST_PUBLISH_ANSWER_TIMEOUT, 30).")
@pass_ctx
def publish(ctx: Context, force: bool, full: bool, reason: str, timeout: int | None) -> None:
    """Ask the running publisher to publish now; prints the version.

    Only the publisher (`blocklist worker`, or `serve`) holds the signing key:
    this command queues a request in the store and waits for its answer."""
    _print_outcome(_ask_publisher(ctx.core(), reason, timeout, force=force, full=full))


@cli.group()
def publications() -> None:
    """Published versions and the publication guard."""


@publications.command("list")
@click.option("--limit", default=20, show_default=True)
@pass_ctx
def publications_list(ctx: Context, limit: int) -> None:
    pub = ctx.core().publisher
    held = pub.held()
    if held:
        state = "released, waiting for the worker" if held.get("released_by") else "HELD"
        click.echo(f"{state}: +{held['added']} -{held['removed']} ~{held['changed']}: {'; '.join(held['reasons'])}")
    for m in pub.versions(limit=limit):
        c = m["changes"]
        click.echo(f"{m['version']:>8}  {m['published_at']}  {m['count']:>9} entries  "
                   f"+{c['added']} -{c['removed']} ~{c['changed']}  {m.get('by', '')}")


@publications.command("release")
@click.option("--reason", required=True)
@pass_ctx
def publications_release(ctx: Context, reason: str) -> None:
    """Release the held publication (the worker publishes it next)."""
    held = ctx.core().publisher.release(cli_actor(), reason)
    click.echo(f"released: +{held['added']} -{held['removed']} ~{held['changed']}")


@publications.command("discard")
@click.option("--reason", required=True)
@pass_ctx
def publications_discard(ctx: Context, reason: str) -> None:
    """Discard the held publication (fix the entries, or it is held again)."""
    ctx.core().publisher.discard(cli_actor(), reason)
    click.echo("discarded the held publication")


@publications.command("preview")
@pass_ctx
def publications_preview(ctx: Context) -> None:
    """What the next publication would change."""
    diff = ctx.core().publisher.preview()
    click.echo(json.dumps({**diff.summary(), "sample": diff.sample(20)}, indent=2))


@cli.group()
def keys() -> None:
    """The programme's signing keys (recorded in the store; secret keys stay on publisher hosts)."""


def _keyring(core: Core) -> Any:
    from app.keys import Keyring

    return Keyring(core.store, core.settings.signing_key_file, core.clock)


@keys.command("init")
@click.option("--reason", default="")
@pass_ctx
def keys_init(ctx: Context, reason: str) -> None:
    """Start a programme on this store: record this host's key (made if
    BLOCKLIST_SIGNING_KEY_FILE does not exist). Never replaces a recorded key."""
    core = ctx.core(programme=False)
    rec, made = _keyring(core).init(cli_actor(), reason)
    file = core.settings.signing_key_file
    if made:
        click.echo(f"made the signing key {rec.current.key_id} in {file} and recorded it as the programme's key",
                   err=True)
    else:
        click.echo(f"recorded the key {rec.current.key_id} in {file} as the programme's key", err=True)
    click.echo(rec.current.public().text(), nl=False)


@keys.command("show")
@click.option("--next", "show_next", is_flag=True, help="Print the announced next key instead.")
@pass_ctx
def keys_show(ctx: Context, show_next: bool) -> None:
    """Print the programme's public key in minisign format (its comment names
    the key id): the key ISPs pin, read from the store, the same on every host."""
    rec = _keyring(ctx.core()).require()
    if show_next:
        if rec.next is None:
            fail("no next key is announced (blocklist keys rotate starts a rotation)")
        click.echo(rec.next.public().text(), nl=False)
        return
    click.echo(rec.current.public().text(), nl=False)


@keys.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def keys_status(ctx: Context, as_json: bool) -> None:
    """The current key, the announced next key and when it takes over, and retired keys."""
    rec = _keyring(ctx.core()).require()
    if as_json:
        click.echo(json.dumps(json.loads(rec.to_json()), indent=2))
        return
    click.echo(f"current: {rec.current.key_id} (since {rec.current.created_at})")
    if rec.next is not None:
        click.echo(f"next:    {rec.next.key_id} (announced {rec.next.created_at}, may sign from {rec.next_from})")
    for k in rec.retired:
        click.echo(f"retired: {k.key_id}")


@keys.command("rotate")
@click.option("--complete", is_flag=True, help="Make the announced next key current and retire the old one.")
@click.option("--now", "early", is_flag=True, help="With --complete: do not wait for the end of the overlap.")
@click.option("--reason", default="")
@click.option("--timeout", type=click.IntRange(1, 3600), default=None, metavar="SECONDS",
              help="With --complete: how long to wait for the publisher to re-publish.")
@pass_ctx
def keys_rotate(ctx: Context, complete: bool, early: bool, reason: str, timeout: int | None) -> None:
    """Rotate the signing key without a flag day (run it on the publisher host).

    Without --complete: make the next key (BLOCKLIST_SIGNING_KEY_FILE.next)
    and announce it in every manifest signed by the current key for
    BLOCKLIST_KEY_ROTATION_OVERLAP seconds. With --complete: make it current,
    retire the old key, and have the publisher publish a version signed by it."""
    core = ctx.core()
    ring = _keyring(core)
    if early and not complete:
        fail("--now goes with --complete", EXIT_USAGE)
    if not complete:
        rec = ring.rotate(cli_actor(), core.settings.key_rotation_overlap, reason)
        assert rec.next is not None
        click.echo(f"made the next key {rec.next.key_id} in {ring.key_file}.next; the publisher re-signs the "
                   f"manifest with {rec.current.key_id} announcing it within a minute", err=True)
        click.echo(f"it may sign from {rec.next_from}: then run `blocklist keys rotate --complete`", err=True)
        click.echo("copy the .next file to every standby publisher host before then", err=True)
        click.echo(rec.next.public().text(), nl=False)
        return
    rec = ring.complete(cli_actor(), early=early, reason=reason)
    click.echo(f"key {rec.current.key_id} is now the programme's key; {rec.retired[-1].key_id} is retired",
               err=True)
    result = _ask_publisher(core, "signing key rotated", timeout, force=True)
    _print_outcome(result)


# --------------------------------------------------------------------------- ISPs


@cli.group()
def isp() -> None:
    """ISP subscribers (feed tokens, TSIG keys, NOTIFY targets)."""


def _xot_details(core: Core) -> dict[str, Any]:
    """What an ISP needs to check our XoT server: the certificate's SPKI pin and name."""
    from app.xot import details

    return {"xot": details(core.store.isps.xot_cert(), core.settings)}


@isp.command("add")
@click.argument("name")
@click.option("--notify", multiple=True, metavar="HOST:PORT", help="Resolver to NOTIFY after each publication.")
@click.option("--allow-from", multiple=True, metavar="CIDR",
              help="Addresses allowed to transfer the zone (a second gate after the TSIG key).")
@click.option("--address-only", is_flag=True,
              help="The weaker mode for resolvers that cannot sign (Unbound): no TSIG key, the --allow-from "
                   "addresses (required) are the only gate.")
@click.option("--reason", default="")
@click.option("--bundle", "bundle", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the onboarding bundle (.zip, with these secrets) to this new file.")
@pass_ctx
def isp_add(ctx: Context, name: str, notify: tuple[str, ...], allow_from: tuple[str, ...], address_only: bool,
            reason: str, bundle: Path | None) -> None:
    """Add an ISP; prints JSON with its feed token and TSIG key (shown once)."""
    core = ctx.core()
    _check_bundle_path(bundle)
    created = core.isps.add(cli_actor(), name, list(notify), list(allow_from), reason, address_only=address_only)
    click.echo(json.dumps({**created, **_xot_details(core)}, indent=2))
    _write_bundle(core, name, created, bundle)


def _check_bundle_path(path: Path | None) -> None:
    if path is None:
        return
    if path.exists():
        fail(f"{path} already exists; the bundle holds secrets and is only written to a new file")
    if not path.parent.is_dir():
        fail(f"{path.parent} is not a directory")


def _write_bundle(core: Core, name: str, issued: dict[str, Any], path: Path | None) -> None:
    """The onboarding bundle with the secrets just issued, readable by its owner only; audited."""
    if path is None:
        return
    from app import onboarding

    ob = onboarding.gather(core, name, feed_token=issued.get("feed_token"), tsig_secret=issued.get("tsig_secret"))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        fail(f"cannot write the bundle to {path}: {e.strerror}")
    with os.fdopen(fd, "wb") as out:
        out.write(ob.bundle())
    core.isps.record_bundle_download(cli_actor(), name, with_secrets=ob.has_secrets)
    click.echo(f"onboarding bundle written to {path}", err=True)


@isp.command("show")
@click.argument("name")
@pass_ctx
def isp_show(ctx: Context, name: str) -> None:
    """One ISP as JSON (no secrets), with the XoT certificate pin."""
    core = ctx.core()
    click.echo(json.dumps({**core.isps.get(name).public(core.latest_version()), **_xot_details(core)}, indent=2))


@isp.command("mode")
@click.argument("name")
@click.argument("mode", type=click.Choice(["tsig", "address-only"]))
@click.option("--reason", default="")
@pass_ctx
def isp_mode(ctx: Context, name: str, mode: str, reason: str) -> None:
    """Switch how NAME's zone transfers are authenticated: tsig (a new key, printed once) or
    address-only (the weaker mode: its key stops working, its --allow-from list is the only gate)."""
    click.echo(json.dumps(ctx.core().isps.set_transfer_auth(cli_actor(), name, mode, reason), indent=2))


@isp.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def isp_list(ctx: Context, as_json: bool) -> None:
    """ISPs with the version they last pulled and when."""
    core = ctx.core()
    latest = core.latest_version()
    items = [i.public(latest) for i in core.isps.list()]
    if as_json:
        click.echo(json.dumps({"latest_version": latest, "isps": items}, indent=2))
        return
    for i in items:
        behind = "" if i["versions_behind"] is None else f"{i['versions_behind']} behind"
        mode = "ADDRESS-ONLY" if i["transfer_auth"] == "address-only" else "tsig"
        click.echo(f"{i['name']:24} {i['status']:8} {mode:12} last v{i['last_version'] or '-'} at "
                   f"{i['last_pull_at'] or 'never'} {behind}")


@isp.command("revoke")
@click.argument("name")
@click.option("--reason", default="")
@pass_ctx
def isp_revoke(ctx: Context, name: str, reason: str) -> None:
    """End an ISP's access at once (feed and zone transfers)."""
    ctx.core().isps.revoke(cli_actor(), name, reason)
    click.echo(f"revoked {name}")


@isp.command("rotate")
@click.argument("name")
@click.option("--token/--no-token", default=True, help="New feed token.")
@click.option("--tsig/--no-tsig", default=False, help="New TSIG secret.")
@click.option("--reason", default="")
@click.option("--bundle", "bundle", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the onboarding bundle (.zip, with the new secrets) to this new file.")
@pass_ctx
def isp_rotate(ctx: Context, name: str, token: bool, tsig: bool, reason: str, bundle: Path | None) -> None:
    """New feed token and/or TSIG secret (printed once)."""
    _check_bundle_path(bundle)
    core = ctx.core()
    rotated = core.isps.rotate(cli_actor(), name, token=token, tsig=tsig, reason=reason)
    click.echo(json.dumps(rotated, indent=2))
    _write_bundle(core, name, rotated, bundle)


@cli.group()
def xot() -> None:
    """Zone transfers over TLS (XoT): the certificate ISPs check."""


@xot.command("cert")
@pass_ctx
def xot_cert(ctx: Context) -> None:
    """Print the certificate the transfer server serves over TLS (PEM), for ISPs' ca-file."""
    pem = ctx.core().store.isps.xot_cert()
    if pem is None:
        fail("no transfer server has served XoT yet (start it with --xot HOST:PORT or BLOCKLIST_XOT_LISTEN)")
    click.echo(pem, nl=False)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except BlocklistError as e:
        fail(e.message, EXIT_USAGE if isinstance(e, ConfigError) else EXIT_FAILED)
    except redis.exceptions.RedisError as e:
        fail(f"Redis error: {e}")


def main(argv: list[str] | None = None) -> None:
    with _errors():
        cli.main(args=argv, prog_name="blocklist", standalone_mode=True)


if __name__ == "__main__":
    main()
