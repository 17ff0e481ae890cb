"""
The one settings object.

Sources, lowest to highest: defaults, a TOML file, ``TALLYGATE_<SECTION>__<KEY>``
environment variables, and the classic variable names users already have
(``DATABASE_URL``, ``TOKEN_DAILY_BUDGET_USD``, ``TOKEN_MONTHLY_BUDGET_USD``,
``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_CHAT_ID``). Nothing outside this module reads
the environment.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import platformdirs
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.errors import ConfigError
from gateway.http1 import ForwardProxy
from gateway.usage import service_tier_name

CONFIG_ENV = "TALLYGATE_CONFIG"
DEFAULT_CONFIG_FILE = Path("config.toml")

# Classic names -> (section, key). They win over everything else because they
# are what existing deployments already export.
CLASSIC_ENV = {
    "DATABASE_URL": ("database", "url"),
    "TOKEN_DAILY_BUDGET_USD": ("budgets", "daily_usd"),
    "TOKEN_MONTHLY_BUDGET_USD": ("budgets", "monthly_usd"),
    "TELEGRAM_BOT_TOKEN": ("telegram", "bot_token"),
    "TELEGRAM_CHAT_ID": ("telegram", "chat_id"),
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayKey(Section):
    key: SecretStr = Field(description="The bearer token a client presents.")
    label: str = Field("", max_length=64, description="Stored with each row.")


class ServerSettings(Section):
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(5611, ge=0, le=65535, description="Port to bind.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the gateway's log lines."
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Largest request body accepted, bytes."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown, how long started calls may finish."
    )
    gateway_keys: list[GatewayKey] = Field(
        default_factory=list,
        description="When set, proxied calls must present one of these keys.",
    )
    admin_token: SecretStr | None = Field(
        None, description="When set, /api, /metrics and the dashboard data need it."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call /api (CORS)."
    )
    front_door: Literal["gateway", "aiohttp"] = Field(
        "gateway",
        description="Who reads plain proxied requests: the gateway, or aiohttp.",
    )


class DatabaseSettings(Section):
    url: SecretStr | None = Field(
        None, description="PostgreSQL URL; empty starts an embedded server."
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("tallygate")),
        description="Embedded server, spool and other local state live here.",
    )
    pool_min_size: int = Field(1, ge=0, description="Connections kept open.")
    pool_max_size: int = Field(8, ge=1, description="Most connections open.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Per connection attempt.")
    statement_timeout_s: float = Field(
        30.0, gt=0, description="Longest statement the gateway runs."
    )

    @model_validator(mode="after")
    def _check_pool(self) -> DatabaseSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) must not exceed "
                f"pool_max_size ({self.pool_max_size})"
            )
        return self


class UpstreamSettings(Section):
    base_url: AnyHttpUrl = Field(description="What the path after /v1 is appended to.")
    models: list[str] = Field(
        default_factory=list, description="Model globs routed here (deepseek-*)."
    )
    default: bool = Field(False, description="Takes calls no other upstream claims.")
    api_key: SecretStr | None = Field(
        None, description="Sent when the client sends no key (or a gateway key)."
    )
    provider: str | None = Field(
        None, description="Price catalog provider id; the upstream name if unset."
    )
    timeout_s: float = Field(
        600.0,
        gt=0,
        description="Wait for the answer's head; then longest silence mid-answer.",
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP and TLS connect.")
    max_connections: int = Field(
        256, ge=1, description="Pooled keep-alive connections to this upstream."
    )
    proxy_url: SecretStr | None = Field(
        None,
        description="HTTP proxy to reach it through: http://[user:password@]host:port.",
    )

    @field_validator("proxy_url")
    @classmethod
    def proxy_url_is_a_proxy(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            ForwardProxy.from_url(value.get_secret_value())
        return value

    @property
    def proxy(self) -> ForwardProxy | None:
        if self.proxy_url is None:
            return None
        return ForwardProxy.from_url(self.proxy_url.get_secret_value())

    def claims(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


class TierPrice(Section):
    input: Decimal = Field(ge=0, description="USD per million input tokens.")
    output: Decimal = Field(ge=0, description="USD per million output tokens.")
    cached_input: Decimal | None = Field(
        None, ge=0, description="USD per million cached input tokens (input if unset)."
    )


class ModelPrice(TierPrice):
    service_tiers: dict[str, TierPrice] = Field(
        default_factory=dict,
        description="Prices at the service tiers the upstream names (flex, ...).",
    )
    web_search: Decimal | None = Field(
        None,
        ge=0,
        description="USD per thousand web search calls (the catalog's if unset).",
    )
    file_search: Decimal | None = Field(
        None,
        ge=0,
        description="USD per thousand file search calls (the catalog's if unset).",
    )

    @field_validator("service_tiers")
    @classmethod
    def tiers_are_named_as_answers_name_them(
        cls, value: dict[str, TierPrice]
    ) -> dict[str, TierPrice]:
        for name in value:
            if service_tier_name(name) is None:
                raise ValueError(
                    f"{name[:40]!r} is not a service tier as answers name them: "
                    "a lower-case word (flex, priority)"
                )
        return value


class RecorderSettings(Section):
    flush_interval_ms: int = Field(100, gt=0, description="Longest a record waits.")
    batch_size: int = Field(1000, gt=0, description="Most records per write.")
    statement_rows: int = Field(
        30,
        gt=0,
        description="Most rows per insert of a small batch (under 500 records).",
    )
    max_queue: int = Field(
        50_000, gt=0, description="High-water mark: past it records go to the spool."
    )
    retry_initial_s: float = Field(0.5, gt=0, description="First spool replay delay.")
    retry_max_s: float = Field(30.0, gt=0, description="Longest spool replay delay.")


class PurposeBudget(Section):
    daily_usd: Decimal | None = Field(None, gt=0, description="Per-day limit, USD.")
    monthly_usd: Decimal | None = Field(None, gt=0, description="Per-month limit, USD.")


class BudgetSettings(Section):
    daily_usd: Decimal | None = Field(None, gt=0, description="Per UTC day, USD.")
    monthly_usd: Decimal | None = Field(None, gt=0, description="Per UTC month, USD.")
    alert_thresholds: list[float] = Field(
        default_factory=lambda: [0.8, 1.0],
        description="Fractions of a limit that raise one alert each.",
    )
    enforce: bool = Field(False, description="Refuse calls (429) over a limit.")
    purposes: dict[str, PurposeBudget] = Field(
        default_factory=dict, description="Limits for one purpose."
    )
    refresh_interval_s: float = Field(
        2.0,
        gt=0,
        description="How often spend is re-read from the database (other replicas').",
    )

    @field_validator("alert_thresholds")
    @classmethod
    def _check_thresholds(cls, value: list[float]) -> list[float]:
        if any(not 0 < v <= 10 for v in value):
            raise ValueError("each threshold must be a fraction above 0 (1.0 = limit)")
        return sorted(set(value))


class AlertSettings(Section):
    webhook_url: SecretStr | None = Field(
        None, description="JSON POST (Slack-compatible) for each alert."
    )
    retry_max_s: float = Field(300.0, gt=0, description="Give up on an alert after.")
    retry_initial_s: float = Field(
        1.0, gt=0, description="First wait before an alert is sent again, seconds."
    )


class TelegramSettings(Section):
    bot_token: SecretStr | None = Field(None, description="Bot API token.")
    chat_id: str | None = Field(None, description="The only chat answered and told.")
    api_base: AnyHttpUrl = Field(
        "https://api.telegram.org",
        # Checked like a configured one, so it is a URL either way, not a str.
        validate_default=True,
        description="Bot API server.",
    )
    language: Literal["en", "it"] = Field("en", description="Language of messages.")
    poll_timeout_s: int = Field(30, ge=0, le=50, description="getUpdates long poll.")
    daily_summary_time: str = Field(
        "00:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="UTC, HH:MM."
    )
    daily_summary: bool = Field(True, description="Send the daily summary.")

    @field_validator("chat_id", mode="before")
    @classmethod
    def _chat_id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @property
    def is_configured(self) -> bool:
        return self.bot_token is not None and bool(self.chat_id)


class RetentionSettings(Section):
    months: int = Field(0, ge=0, description="Keep this many months; 0 keeps all.")


def default_upstreams() -> dict[str, UpstreamSettings]:
    return {
        "openai": UpstreamSettings(base_url="https://api.openai.com/v1", default=True),
        "deepseek": UpstreamSettings(
            base_url="https://api.deepseek.com/v1", models=["deepseek-*"]
        ),
    }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TALLYGATE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    upstreams: dict[str, UpstreamSettings] = Field(
        default_factory=default_upstreams,
        description="The APIs calls are forwarded to, by name (the path prefix).",
    )
    pricing: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Prices by model, ahead of the built-in catalog.",
    )
    recorder: RecorderSettings = Field(default_factory=RecorderSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(
        cls, value: dict[str, UpstreamSettings]
    ) -> dict[str, UpstreamSettings]:
        if not value:
            raise ValueError("at least one upstream is needed")
        for name in value:
            if not name.isidentifier() or name in {"v1", "api", "dashboard"}:
                raise ValueError(f"upstream name {name!r} cannot be a path prefix")
        defaults = [name for name, up in value.items() if up.default]
        if len(defaults) > 1:
            raise ValueError(f"only one upstream may be default, got {defaults}")
        return value

    @property
    def default_upstream(self) -> str:
        """Name of the upstream that takes calls no glob claims."""
        for name, upstream in self.upstreams.items():
            if upstream.default:
                return name
        return next(iter(self.upstreams))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = init_settings.init_kwargs.pop("_toml_file", None)
        environ = init_settings.init_kwargs.pop("_environ", None)
        sources: list[PydanticBaseSettingsSource] = [
            ClassicEnvSource(settings_cls, environ),
            env_settings,
        ]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file))
        return (init_settings, *sources)


class ClassicEnvSource(PydanticBaseSettingsSource):
    """The variable names that predate the gateway, mapped onto sections."""

    def __init__(
        self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None
    ) -> None:
        super().__init__(settings_cls)
        self.environ = os.environ if environ is None else environ

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, (section, key) in CLASSIC_ENV.items():
            value = self.environ.get(name)
            if value:
                found.setdefault(section, {})[key] = value
        return found


def find_config_file(
    explicit: Path | None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """Return the TOML file to read: --config, $TALLYGATE_CONFIG, ./config.toml."""
    environ = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    if DEFAULT_CONFIG_FILE.is_file():
        return DEFAULT_CONFIG_FILE
    return None


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """
    Build the settings from every source; raise ConfigError naming the bad key.

    *environ* replaces ``os.environ`` for the classic names and the file lookup
    (tests pass their own); the ``TALLYGATE_`` variables always come from the
    process environment, as pydantic-settings reads them.
    """
    path = find_config_file(config_file, environ)
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return Settings(_toml_file=path, _environ=environ, **overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, path)) from None
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"cannot read {path}: {exc}") from None


def describe_validation_error(exc: ValidationError, path: Path | None) -> str:
    """
    One line: for each problem the dotted key, the value given, what was expected.

    A value is shown only when it is a plain scalar of a setting that holds no
    secret: a whole section (what a cross-field check receives) could carry
    a password or a key inside it.
    """
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        key = ".".join(str(part) for part in loc) or "settings"
        value = error.get("input")
        if error["type"] == "missing":
            lines.append(f"{key} is missing: {error['msg']}")
        elif is_secret_location(loc) or not isinstance(value, str | int | float):
            lines.append(f"{key}: {error['msg']}")
        else:
            lines.append(f"{key} = {value!r}: {error['msg']}")
    where = f" in {path}" if path else ""
    return f"invalid configuration{where}: " + "; ".join(lines)


def is_secret_location(loc: tuple[int | str, ...]) -> bool:
    """True when *loc* points into a setting typed as a secret (or cannot be told)."""
    annotation: Any = Settings
    for part in loc:
        model = model_in(annotation)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            continue
        # Inside a dict or list: the value type of the container.
        args = [a for a in get_args(annotation) if a is not type(None)]
        if not args:
            # Past what the model declares (a validator's own location):
            # say nothing rather than guess.
            return True
        annotation = args[-1]
    return SecretStr in (annotation, *get_args(annotation))


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class *annotation* is, or holds beside None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


# -- the reference table the README carries -----------------------------------

# How the keys of a table of named entries are written in the reference.
ENTRY_NAMES = {
    "upstreams": "<name>",
    "pricing": '"<model>"',
    "service_tiers": "<tier>",
    "purposes": "<purpose>",
}
TYPE_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Decimal: "decimal",
    Path: "path",
    SecretStr: "secret string",
    AnyHttpUrl: "URL",
}


def iter_settings_fields(
    model: type[BaseModel] = Settings, prefix: str = ""
) -> Iterator[tuple[str, FieldInfo]]:
    """Every setting as (dotted key, field), sections unfolded, in declared order."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = model_in(field.annotation)
        if section is not None and get_origin(field.annotation) is None:
            yield from iter_settings_fields(section, f"{key}.")
            continue
        origin = get_origin(field.annotation)
        inner = model_in(get_args(field.annotation)[-1]) if origin else None
        if inner is None:
            yield key, field
        elif origin is dict:
            yield key, field
            entry = ENTRY_NAMES.get(name, "<name>")
            yield from iter_settings_fields(inner, f"{key}.{entry}.")
        else:
            yield key, field
            yield from iter_settings_fields(inner, f"{key}[].")


def describe_type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (list, dict):
        model = model_in(args[-1])
        item = "tables" if model else f"{describe_type(args[-1])}s"
        return f"list of {item}" if origin is list else f"table of {item}"
    if args and type(None) in args:
        return " or ".join(describe_type(a) for a in args if a is not type(None))
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def describe_default(field: FieldInfo) -> str:
    if field.default_factory is None:
        value = field.default
        if value is PydanticUndefined:
            return "required"
    else:
        value = field.default_factory()  # type: ignore[call-arg]
    if value is None:
        return "unset"
    if isinstance(value, Path):
        # Differs per machine: the platform's per-user data directory.
        return "user data dir"
    if isinstance(value, dict):
        return ", ".join(f"`{k}`" for k in value) if value else "`{}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def settings_reference() -> str:
    """
    A Markdown table of every setting: key, type, default and description.

    The README's configuration reference is this table, pasted between
    ``<!-- settings:begin -->`` and ``<!-- settings:end -->``; a test keeps
    the two equal.
    """
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key, field in iter_settings_fields():
        description = (field.description or "").replace("|", "\\|")
        lines.append(
            f"| `{key}` | {describe_type(field.annotation)} "
            f"| {describe_default(field)} | {description} |"
        )
    return "\n".join(lines) + "\n"
