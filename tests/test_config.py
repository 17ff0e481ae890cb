from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.config import (
    Settings,
    iter_settings_fields,
    load_settings,
    model_in,
    settings_reference,
)
from gateway.errors import ConfigError
from tests.harness import serve_once

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.toml"
# A commented-out key or table: "# key = value", "# [table]".
COMMENTED = re.compile(r"^# ?((?:[A-Za-z_][A-Za-z0-9_]* = |\[).*)$")


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("TALLYGATE_"):
            monkeypatch.delenv(name)


def uncommented_example() -> str:
    """The example with every optional key switched on."""
    lines = EXAMPLE.read_text().splitlines()
    return "\n".join(
        match[1] if (match := COMMENTED.match(line)) else line for line in lines
    )


def missing_keys(model: type[BaseModel], table: Any, prefix: str) -> list[str]:
    """The fields of *model* (and of its sections) that *table* does not set."""
    missing = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if name not in table:
            missing.append(key)
            continue
        section = model_in(field.annotation)
        value = table[name]
        if section is None:
            continue
        if isinstance(value, dict) and name in section.model_fields:
            continue
        if isinstance(value, list):
            entries = value
        elif set(value) <= set(section.model_fields):
            missing += missing_keys(section, value, f"{key}.")
            continue
        else:
            entries = list(value.values())
        # Named entries: at least one of them shows every key.
        gaps = [missing_keys(section, entry, f"{key}.*.") for entry in entries]
        missing += min(gaps, key=len, default=[f"{key}.*"])
    return missing


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)

    settings = load_settings(Path("config.example.toml"), environ={})

    assert settings.default_upstream == "openai"
    assert settings.upstreams["deepseek"].claims("deepseek-chat")
    assert str(settings.upstreams["deepseek"].base_url) == "https://api.deepseek.com/v1"
    assert settings.pricing["my-model"].input == Decimal("0.15")
    assert settings.budgets.purposes["news"].daily_usd == Decimal("1.0")


def test_the_example_still_loads_with_every_optional_key_switched_on(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, uncommented_example())

    settings = load_settings(path, environ={})

    assert settings.database.url is not None
    assert settings.server.gateway_keys[0].label == "trading-agent"


def test_the_example_shows_every_key_of_the_settings() -> None:
    """Adding a setting without documenting it in the example fails here."""
    table = tomllib.loads(uncommented_example())

    assert missing_keys(Settings, table, "") == []


def test_the_example_shows_the_defaults_of_the_keys_it_sets(tmp_path: Path) -> None:
    """Each key set in the example carries its default (but for the examples)."""
    example = load_settings(EXAMPLE, environ={})
    defaults = load_settings(write_config(tmp_path, ""), environ={})

    for section in ("server", "database", "recorder", "alerts", "telegram"):
        shown = getattr(example, section).model_dump(exclude={"data_dir"})
        assert shown == getattr(defaults, section).model_dump(exclude={"data_dir"})
    assert example.upstreams == defaults.upstreams
    assert example.budgets.model_dump(exclude={"purposes"}) == (
        defaults.budgets.model_dump(exclude={"purposes"})
    )


def test_sources_rank_defaults_toml_environment_then_classic_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        tmp_path,
        '[server]\nport = 6000\nhost = "0.0.0.0"\n'
        "[recorder]\nbatch_size = 10\nmax_queue = 99\n"
        '[database]\nurl = "postgresql://toml/db"\n'
        "[budgets]\ndaily_usd = 5\nmonthly_usd = 50\n"
        '[telegram]\nchat_id = "1"\n',
    )
    monkeypatch.setenv("TALLYGATE_SERVER__PORT", "7000")
    monkeypatch.setenv("TALLYGATE_RECORDER__MAX_QUEUE", "123")
    monkeypatch.setenv("TALLYGATE_DATABASE__URL", "postgresql://env/db")
    monkeypatch.setenv("TALLYGATE_BUDGETS__DAILY_USD", "6")
    monkeypatch.setenv("TALLYGATE_TELEGRAM__CHAT_ID", "2")
    classic = {
        "DATABASE_URL": "postgresql://classic/db",
        "TOKEN_DAILY_BUDGET_USD": "7",
        "TOKEN_MONTHLY_BUDGET_USD": "70",
        "TELEGRAM_BOT_TOKEN": "123:abc",
        "TELEGRAM_CHAT_ID": "3",
    }

    settings = load_settings(path, environ=classic)

    assert settings.recorder.flush_interval_ms == 100  # default
    assert settings.recorder.batch_size == 10  # TOML
    assert settings.server.host == "0.0.0.0"  # TOML, beside an env key
    assert settings.server.port == 7000  # environment over TOML
    assert settings.recorder.max_queue == 123
    assert settings.database.url is not None
    assert settings.database.url.get_secret_value() == "postgresql://classic/db"
    assert settings.budgets.daily_usd == Decimal(7)  # classic over environment
    assert settings.budgets.monthly_usd == Decimal(70)  # classic over TOML
    assert settings.telegram.chat_id == "3"
    assert settings.telegram.bot_token is not None
    assert settings.telegram.bot_token.get_secret_value() == "123:abc"


def test_a_bad_value_names_key_value_and_expectation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLYGATE_RECORDER__BATCH_SIZE", "0")

    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, ""), environ={})

    message = str(caught.value)
    assert "\n" not in message
    assert "recorder.batch_size = '0'" in message
    assert "greater than 0" in message


@pytest.mark.parametrize(
    "toml",
    [
        # A secret of the wrong type.
        "[server]\nadmin_token = 424242424242\n",
        # A check across fields receives the whole section, password included.
        '[database]\nurl = "postgresql://u:424242424242@h/d"\n'
        "pool_min_size = 9\npool_max_size = 2\n",
        # A check across upstreams receives their keys.
        '[upstreams.a]\nbase_url = "http://a/v1"\ndefault = true\n'
        'api_key = "sk-424242424242"\n'
        '[upstreams.b]\nbase_url = "http://b/v1"\ndefault = true\n',
        # A proxy URL that is not one, with its password.
        '[upstreams.a]\nbase_url = "https://a/v1"\ndefault = true\n'
        'proxy_url = "https://bob:424242424242@proxy:3128"\n',
    ],
)
def test_a_bad_value_never_shows_a_secret(tmp_path: Path, toml: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, toml), environ={})

    assert "424242424242" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_service_tier_price_must_be_named_as_answers_name_tiers(
    tmp_path: Path,
) -> None:
    toml = (
        '[pricing."m"]\ninput = 1\noutput = 2\n'
        '[pricing."m".service_tiers.Flex]\ninput = 0.5\noutput = 1\n'
    )

    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, toml), environ={})

    assert "pricing.m.service_tiers: Value error, 'Flex' is not a service tier" in str(
        caught.value
    )


def test_serve_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "many"\n[telegram]\nbot_token = 1234567\n')

    done = serve_once(bad, cwd=tmp_path)

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "server.port = 'many'" in done.stderr
    assert "1234567" not in done.stderr


def test_the_reference_lists_every_key_once() -> None:
    reference = settings_reference()
    keys = [key for key, _ in iter_settings_fields()]

    assert len(keys) == len(set(keys))
    for key in keys:
        assert f"| `{key}` |" in reference
    assert "| `upstreams.<name>.base_url` | URL | required |" in reference
    assert "| `recorder.flush_interval_ms` | integer | `100` |" in reference


def test_the_readme_reference_matches_the_settings() -> None:
    """The README's table is the generated one; regenerate it after a change."""
    readme = ROOT / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    begin, end = "<!-- settings:begin -->", "<!-- settings:end -->"
    if begin not in text or end not in text:
        pytest.skip("README.md has no settings reference markers yet")

    block = text.split(begin, 1)[1].split(end, 1)[0]
    if not block.lstrip().startswith("|"):
        pytest.skip("the README's settings reference is not pasted in yet")

    assert block.strip() == settings_reference().strip(), (
        "README settings reference is stale: paste the output of "
        "python -c 'from gateway.config import settings_reference as r; "
        "print(r())'"
    )
