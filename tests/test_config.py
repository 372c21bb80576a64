"""Settings are read once, strictly, and every variable is documented in deploy/env.example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import Settings
from app.errors import ConfigError

ROOT = Path(__file__).parent.parent


def test_defaults_are_production_safe() -> None:
    s = Settings.from_env({})
    assert s.cookie_secure and s.require_other_agency and s.reverify_days == 90
    assert (s.guard_remove_pct, s.guard_add_pct, s.guard_add_max) == (10.0, 25.0, 1000)
    assert s.dns_listen == ("127.0.0.1", 8053) and s.web_listen == ("127.0.0.1", 8000)
    assert s.rpz_zone == "blocklist.rpz."


@pytest.mark.parametrize(("env", "message"), [
    ({"BLOCKLIST_PUBLISH_INTERVAL": "5m"}, "BLOCKLIST_PUBLISH_INTERVAL must be a whole number"),
    ({"BLOCKLIST_PUBLISH_INTERVAL": "0"}, "BLOCKLIST_PUBLISH_INTERVAL must be at least 1"),
    ({"BLOCKLIST_REQUIRE_OTHER_AGENCY": "maybe"}, "BLOCKLIST_REQUIRE_OTHER_AGENCY must be true or false"),
    ({"BLOCKLIST_GUARD_REMOVE_PCT": "150"}, "BLOCKLIST_GUARD_REMOVE_PCT is out of range"),
    ({"BLOCKLIST_DNS_LISTEN": "localhost"}, "must look like HOST:PORT"),
    ({"BLOCKLIST_WEB_LISTEN": "127.0.0.1:70000"}, "out of range"),
    ({"BLOCKLIST_CATEGORIES": "CSAM!"}, "BLOCKLIST_CATEGORIES"),
    ({"BLOCKLIST_LOG_FORMAT": "xml"}, "BLOCKLIST_LOG_FORMAT"),
    ({"BLOCKLIST_DNS_QUERIES_PER_SECOND": "fast"}, "BLOCKLIST_DNS_QUERIES_PER_SECOND must be a number"),
    ({"BLOCKLIST_DNS_MAX_CONNECTIONS_PER_ADDRESS": "0"}, "BLOCKLIST_DNS_MAX_CONNECTIONS_PER_ADDRESS must be at"),
    ({"BLOCKLIST_XOT_LISTEN": "853"}, "BLOCKLIST_XOT_LISTEN must look like HOST:PORT"),
    ({"BLOCKLIST_SECRET_KEY": "a", "BLOCKLIST_SECRET_KEY_FILE": "/x"}, "either BLOCKLIST_SECRET_KEY or"),
    ({"BLOCKLIST_SECRET_KEY_FILE": "/no/such/file"}, "BLOCKLIST_SECRET_KEY_FILE: cannot read"),
    ({"BLOCKLIST_RPZ_OVERLAY_ZONE": "blocklist.rpz"}, "BLOCKLIST_RPZ_OVERLAY_ZONE must differ from BLOCKLIST_RPZ_ZONE"),
    ({"BLOCKLIST_RPZ_OVERLAY_ZONE": "a..b"}, "BLOCKLIST_RPZ_OVERLAY_ZONE: 'a..b.' is not a DNS name"),
    ({"BLOCKLIST_RPZ_ZONE": "."}, "BLOCKLIST_RPZ_ZONE cannot be the root zone"),
    ({"BLOCKLIST_RPZ_FOLD_GRACE": "-1"}, "BLOCKLIST_RPZ_FOLD_GRACE must be at least 0"),
    ({"BLOCKLIST_RPZ_FOLD_CHANGES": "0"}, "BLOCKLIST_RPZ_FOLD_CHANGES must be at least 1"),
])
def test_a_malformed_setting_stops_with_its_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Settings.from_env(env)
    assert message in e.value.message


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("s3cret-value\n")
    assert Settings.from_env({"BLOCKLIST_SECRET_KEY_FILE": str(f)}).secret_key == "s3cret-value"


def test_the_data_dir_moves_the_default_paths() -> None:
    s = Settings.from_env({"BLOCKLIST_DATA_DIR": "/srv/bl"})
    assert s.artifact_dir == Path("/srv/bl/artifacts")
    assert s.signing_key_file == Path("/srv/bl/keys/blocklist.key")
    moved = Settings.from_env({}).with_data_dir(Path("/x"))
    assert moved.artifact_dir == Path("/x/artifacts")


def test_every_variable_read_is_documented_in_env_example() -> None:
    source = (ROOT / "app" / "config.py").read_text()
    read = set(re.findall(r'"(BLOCKLIST_[A-Z0-9_]+)"', source))
    documented = set(re.findall(r"#?(BLOCKLIST_[A-Z0-9_]+)=", (ROOT / "deploy" / "env.example").read_text()))
    assert read, "no variables found"
    # Secrets are documented in their NAME_FILE form, which every setting accepts.
    assert {v for v in read if v not in documented and f"{v}_FILE" not in documented} == set()


def test_the_overlay_zone_follows_the_base_zone_name_unless_set() -> None:
    assert Settings.from_env({}).rpz_overlay_zone == "overlay.blocklist.rpz."
    assert Settings.from_env({"BLOCKLIST_RPZ_ZONE": "List.Example"}).rpz_overlay_zone == "overlay.list.example."
    assert Settings.from_env({"BLOCKLIST_RPZ_OVERLAY_ZONE": "fast.example"}).rpz_overlay_zone == "fast.example."
