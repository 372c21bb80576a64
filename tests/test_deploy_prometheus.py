"""deploy/prometheus/alerts.yml: valid, about metrics that exist, and firing when it should.

``promtool`` (Debian's prometheus package) checks the rules and runs them
over synthetic series (``promtool test rules``: time starts at 0). The
metric names the rules use must be ones the web tier exports or the ones
the transfer server documents.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from app.clock import FakeClock
from app.core import Core
from app.domain import SYSTEM
from app.web import create_app
from tests.conftest import Personas, publish, require_binary

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"
#: What workers/xfrd.py exports on BLOCKLIST_XFRD_METRICS_LISTEN.
XFRD_METRICS = {
    "blocklist_xfr_requests_total", "blocklist_xfr_bytes_total", "blocklist_xfr_refusals_total",
    "blocklist_xfr_notify_total", "blocklist_xfr_serial", "blocklist_xfr_load_seconds", "blocklist_xfr_connections",
}
WEB = 'instance="web1:443",job="blocklist-web"'
XFRD = 'instance="dns1:9153",job="blocklist-xfrd"'


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def alert(name: str, at: str, *firing: dict[str, Any]) -> dict[str, Any]:
    """At ``at``, ``name`` fires exactly as ``firing`` says (none: it does not fire)."""
    return {"eval_time": at, "alertname": name, "exp_alerts": list(firing)}


def fired(labels: dict[str, str], **annotations: str) -> dict[str, Any]:
    """One expected alert: its labels and its rendered annotations."""
    return {"exp_labels": labels, "exp_annotations": annotations}


def run_rule_tests(tmp_path: Path, tests: list[dict[str, Any]], evaluation_interval: str = "1m") -> None:
    spec = tmp_path / "alerts_test.yml"
    # JSON is YAML: no YAML library needed to write the test file.
    spec.write_text(json.dumps({"rule_files": [str(RULES)], "evaluation_interval": evaluation_interval,
                                "tests": tests}))
    result = promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_manifest_alert_fires_before_it_expires_and_not_while_it_is_fresh(tmp_path: Path) -> None:
    run_rule_tests(tmp_path, [
        {   # re-signed every 15 minutes: always about an hour left
            "interval": "15m",
            "input_series": [{"series": f"blocklist_manifest_expiry_timestamp_seconds{{{WEB}}}",
                              "values": "3600+900x8"},
                             {"series": f"blocklist_manifest_signed_timestamp_seconds{{{WEB}}}",
                              "values": "0+900x8"}],
            "alert_rule_test": [alert("BlocklistManifestNearExpiry", "2h"), alert("BlocklistWorkerNotSigning", "2h")],
        },
        {   # the worker stopped at 0: the manifest signed then expires at 1 h
            "interval": "1m",
            "input_series": [{"series": f"blocklist_manifest_expiry_timestamp_seconds{{{WEB}}}", "values": "3600x90"},
                             {"series": f"blocklist_manifest_signed_timestamp_seconds{{{WEB}}}", "values": "0x90"}],
            "alert_rule_test": [
                alert("BlocklistManifestNearExpiry", "30m"),
                alert("BlocklistManifestNearExpiry", "45m", fired(
                    {"severity": "critical"}, summary="The signed manifest expires in 15m 0s",
                    description="The worker re-signs the manifest every BLOCKLIST_MANIFEST_REFRESH seconds; it has "
                                "not. Check blocklist-worker.service and the signing key.")),
                alert("BlocklistWorkerNotSigning", "40m"),
                alert("BlocklistWorkerNotSigning", "55m", fired(
                    {"severity": "warning"}, summary="The manifest was last signed 55m 0s ago",
                    description="The publisher worker is stopped, stuck, or cannot reach Redis or its key.")),
            ],
        },
    ])


def test_no_publication_for_a_week_alerts(tmp_path: Path) -> None:
    run_rule_tests(tmp_path, [{
        # A sample every 4 minutes: Prometheus forgets a series after 5 minutes without one.
        "interval": "4m",
        "input_series": [{"series": f"blocklist_publication_last_timestamp_seconds{{{WEB}}}", "values": "0x3000"}],
        "alert_rule_test": [alert("BlocklistNoPublication", "6d"),
                            alert("BlocklistNoPublication", "8d", fired(
                                {"severity": "warning"}, summary="No version published for 8d 0h 0m 0s"))],
    }], evaluation_interval="10m")


def test_an_isp_behind_for_a_day_alerts_and_one_up_to_date_does_not(tmp_path: Path) -> None:
    run_rule_tests(tmp_path, [{
        "interval": "1m",
        "input_series": [
            # Behind since time 0, reported by two web hosts.
            {"series": f'blocklist_isp_behind_seconds{{isp="slow-isp",{WEB}}}', "values": "0+60x1600"},
            {"series": 'blocklist_isp_behind_seconds{isp="slow-isp",instance="web2:443",job="blocklist-web"}',
             "values": "0+60x1600"},
            {"series": f'blocklist_isp_behind_seconds{{isp="quick-isp",{WEB}}}', "values": "0x1600"},
        ],
        "alert_rule_test": [alert("BlocklistIspBehind", "20h"),
                            alert("BlocklistIspBehind", "25h", fired(
                                {"severity": "warning", "isp": "slow-isp"},
                                summary="ISP slow-isp has been behind for 1d 1h 0m 0s",
                                description="It has not fetched the latest version (feed or zone transfer). Contact "
                                            "its operations team."))],
    }])


def test_an_isp_whose_resolvers_lag_for_two_hours_alerts_and_one_that_catches_up_does_not(tmp_path: Path) -> None:
    run_rule_tests(tmp_path, [{
        "interval": "1m",
        "input_series": [
            # Stuck on an old version since time 0: the lag grows a second a second.
            {"series": f'blocklist_isp_enforcing_behind_seconds{{isp="stuck-isp",{WEB}}}', "values": "0+60x200"},
            # Behind for 90 minutes after each publication, then up to date again.
            {"series": f'blocklist_isp_enforcing_behind_seconds{{isp="slowish-isp",{WEB}}}',
             "values": "0+60x90 0x110"},
            # Fetches the latest version all the time: no enforcement alert without a report series.
            {"series": f'blocklist_isp_behind_seconds{{isp="quiet-isp",{WEB}}}', "values": "0x200"},
        ],
        "alert_rule_test": [
            alert("BlocklistIspNotEnforcing", "2h"),
            alert("BlocklistIspNotEnforcing", "2h20m", fired(
                {"severity": "warning", "isp": "stuck-isp"},
                summary="The resolvers of ISP stuck-isp have not enforced the latest version for 2h 20m 0s",
                description="They were last seen enforcing an older version. The ISP's resolvers are not loading "
                            "the zone or its updates; contact its operations team.")),
        ],
    }])


def test_an_isp_whose_resolvers_stop_enforcing_alerts_after_half_an_hour(tmp_path: Path) -> None:
    run_rule_tests(tmp_path, [{
        "interval": "1m",
        "input_series": [
            # The last check report found a resolver not enforcing the list from minute 10 on.
            {"series": f'blocklist_isp_resolvers_enforcing{{isp="lax-isp",{WEB}}}', "values": "1x10 0x60"},
            {"series": f'blocklist_isp_resolvers_enforcing{{isp="good-isp",{WEB}}}', "values": "1x70"},
        ],
        "alert_rule_test": [alert("BlocklistIspResolverNotEnforcing", "30m"),
                            alert("BlocklistIspResolverNotEnforcing", "45m", fired(
                                {"severity": "warning", "isp": "lax-isp"},
                                summary="A resolver of ISP lax-isp does not enforce the list",
                                description="Its last check report names the resolver (ISP page); the ISP's "
                                            "resolvers may download the list without applying it."))],
    }])


def test_tsig_failures_alert_but_other_refusals_do_not(tmp_path: Path) -> None:
    run_rule_tests(tmp_path, [
        {
            "interval": "1m",
            "input_series": [
                {"series": f'blocklist_xfr_refusals_total{{reason="not_served",{XFRD}}}', "values": "0+10x30"},
                {"series": f'blocklist_xfr_refusals_total{{reason="acl",{XFRD}}}', "values": "0+10x30"},
            ],
            "alert_rule_test": [alert("BlocklistTsigFailures", "20m")],
        },
        {
            "interval": "1m",
            "input_series": [{"series": f'blocklist_xfr_refusals_total{{reason="badsig",{XFRD}}}',
                              "values": "0+1x30"}],
            "alert_rule_test": [alert("BlocklistTsigFailures", "20m", fired(
                {"severity": "warning", "reason": "badsig", "instance": "dns1:9153"},
                summary="15 transfers refused (badsig) on dns1:9153 in 15 minutes"))],
        },
    ])


def test_replays_and_floods_at_the_transfer_server_alert_but_a_few_do_not(tmp_path: Path) -> None:
    run_rule_tests(tmp_path, [
        {
            "interval": "1m",
            "input_series": [
                {"series": f'blocklist_xfr_refusals_total{{reason="rate",{XFRD}}}', "values": "0+10x30"},
                {"series": f'blocklist_xfr_refusals_total{{reason="replay",{XFRD}}}', "values": "0+0x30"},
            ],
            "alert_rule_test": [alert("BlocklistTransferAbuse", "20m", fired(
                {"severity": "warning", "reason": "rate", "instance": "dns1:9153"},
                summary="150 transfer-server refusals (rate) on dns1:9153 in 15 minutes"))],
        },
        {
            "interval": "1m",
            "input_series": [{"series": f'blocklist_xfr_refusals_total{{reason="idle",{XFRD}}}',
                              "values": "0+1x30"}],
            "alert_rule_test": [alert("BlocklistTransferAbuse", "20m")],
        },
    ])


def test_a_transfer_server_serving_an_old_serial_alerts(tmp_path: Path) -> None:
    run_rule_tests(tmp_path, [{
        "interval": "1m",
        "input_series": [
            {"series": f"blocklist_publication_version{{{WEB}}}", "values": "7x30"},
            {"series": f"blocklist_xfr_serial{{{XFRD}}}", "values": "6x30"},
            {"series": 'blocklist_xfr_serial{instance="dns2:9153",job="blocklist-xfrd"}', "values": "7x30"},
        ],
        "alert_rule_test": [alert("BlocklistTransferServerBehind", "20m", fired(
            {"severity": "critical", "instance": "dns1:9153", "job": "blocklist-xfrd"},
            summary="dns1:9153 serves a zone 1 versions old"))],
    }])


def exported_names(core: Core, tmp_path: Path, personas: Personas) -> set[str]:
    """Sample names of a scrape of a web process that has seen every kind of figure."""
    entry = core.curation.submit(personas.alice.actor, "alerts-one.test", "domain", True, "csam", "seen", "c")
    core.curation.act(personas.bruno.actor, entry.id, "approve", "ok")
    publish(core)
    isp = core.isps.add(SYSTEM, "isp-a")
    core.isps.record_pull(core.isps.authenticate_feed(isp["feed_token"]), 1, "feed:snapshots")
    from app.domain import iso

    core.isps.record_report(core.isps.authenticate_feed(isp["feed_token"]), {"resolvers": [
        {"resolver": "192.0.2.53", "version": 1, "blocked": True, "checked_at": iso(core.clock())}]})
    health = tmp_path / "run"
    health.mkdir()
    (health / "worker").write_text("1800000000\n")
    from dataclasses import replace

    settings = replace(core.settings, health_dir=health)
    app = create_app(core=Core(settings=settings, store=core.store, clock=FakeClock(1_800_000_100.0)),
                     test_config={"TESTING": True})
    client = app.test_client()
    client.get("/livez")
    text = client.get("/metrics").get_data(as_text=True)
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_metric_in_the_rules_exists(core: Core, tmp_path: Path, personas: Personas) -> None:
    rules = "\n".join(line for line in RULES.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\bblocklist_[a-z_]+\b", rules))
    exported = exported_names(core, tmp_path, personas) | XFRD_METRICS
    assert used - exported == set()
