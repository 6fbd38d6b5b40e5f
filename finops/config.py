"""Settings: FINOPS_* environment variables over an optional TOML file over the defaults.

Nested settings use a double underscore in their variable name, e.g.
FINOPS_RULES__IDLE_GPU_AVG_PERCENT=3 sets [rules] idle_gpu_avg_percent in the TOML file.
"""

from __future__ import annotations

import json
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

Percent = Annotated[float, Field(ge=0, le=100)]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ConfigError(Exception):
    """A user's configuration mistake: reported as one line, exit code 2."""


class RuleSettings(BaseModel):
    idle_gpu_avg_percent: Percent = Field(5, description="idle-gpu-vm: GPU average below this")
    idle_gpu_p95_percent: Percent = Field(
        10, description="idle-gpu-vm: and p95 of hourly GPU maximum below this"
    )
    idle_cpu_avg_percent: Percent = Field(
        5, description="idle-gpu-vm: CPU average below this when GPU telemetry is missing"
    )
    idle_min_hours: int = Field(
        24, ge=1, description="idle-gpu-vm: hours of metrics the window must hold for a verdict"
    )
    idle_max_data_age_hours: int = Field(
        3, ge=1, description="idle-gpu-vm: no verdict when the newest metric is older than this"
    )
    working_hours: str = Field(
        "08:00-20:00", description="gpu-vm-no-auto-shutdown: the hours a GPU VM is needed"
    )
    working_days: list[str] = Field(
        ["mon", "tue", "wed", "thu", "fri"], description="gpu-vm-no-auto-shutdown: working days"
    )
    anomaly_percent: float = Field(
        50,
        gt=0,
        description="gpu-cost-anomaly: percent a day's GPU spend exceeds its trailing median by",
    )
    anomaly_min_amount: Decimal = Field(
        Decimal(500),
        ge=0,
        description="gpu-cost-anomaly: and by more than this, in the billing currency",
    )
    required_tags: list[str] = Field(
        ["owner", "cost-center", "environment"],
        description="gpu-vm-missing-tags: tags every GPU VM must carry",
    )
    quota_near_percent: Percent = Field(
        80, description="gpu-quota-near-limit: a GPU family's quota used at or above this"
    )
    oversized_memory_p95_percent: Percent = Field(
        50, description="gpu-vm-oversized: p95 of hourly peak GPU memory used below this of VRAM"
    )
    oversized_gpu_p95_percent: Percent = Field(
        60, description="gpu-vm-oversized: and p95 of hourly peak GPU utilisation at most this"
    )
    oversized_headroom_percent: float = Field(
        25, ge=0, description="gpu-vm-oversized: VRAM the smaller size keeps above the p95 use"
    )
    oversized_target_gpu_percent: Percent = Field(
        80, description="gpu-vm-oversized: GPU utilisation the smaller size may reach at p95"
    )
    anomaly_baseline_days: int = Field(
        14, ge=3, le=60, description="gpu-cost-anomaly: days the trailing median is taken over"
    )
    commitment_running_percent: Percent = Field(
        95, description="gpu-vm-commitment-candidate: share of the hours the VM ran, at least"
    )
    commitment_days: int = Field(
        30, ge=7, le=365, description="gpu-vm-commitment-candidate: days the share is taken over"
    )
    interruptible_tags: list[str] = Field(
        ["workload=training", "workload=batch"],
        description="gpu-vm-spot-candidate: tag name=value pairs that mark interruptible work",
    )
    disk_unattached_days: float = Field(
        1, ge=0, description="gpu-disks-orphaned: an unattached disk counts after this many days"
    )
    disk_deallocated_days: float = Field(
        14, ge=0, description="gpu-disks-orphaned: a GPU VM deallocated longer leaves its disks"
    )

    @field_validator("working_hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        match = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", value.strip())
        if not match:
            raise ValueError("must look like 08:00-20:00")
        h1, m1, h2, m2 = map(int, match.groups())
        if not (h1 < 24 and h2 <= 24 and m1 < 60 and m2 < 60 and (h1, m1) < (h2, m2)):
            raise ValueError("must be a start before an end within one day, like 08:00-20:00")
        return value.strip()

    @field_validator("working_days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        days = [d.strip().lower()[:3] for d in value]
        if not days or any(d not in WEEKDAYS for d in days):
            raise ValueError(f"must be weekday names from {', '.join(WEEKDAYS)}")
        return days

    @field_validator("interruptible_tags")
    @classmethod
    def _pairs(cls, value: list[str]) -> list[str]:
        for pair in value:
            name, _, tag_value = pair.partition("=")
            if not name.strip() or not tag_value.strip():
                raise ValueError(f"{pair!r} must look like workload=training")
        return [p.strip() for p in value]

    def interruptible(self) -> set[tuple[str, str]]:
        """(tag name, value) pairs, lower-cased: tags compare without case."""
        return {
            (n.strip().lower(), v.strip().lower())
            for n, v in (p.split("=", 1) for p in self.interruptible_tags)
        }

    def working_hours_per_week(self) -> Decimal:
        start, end = (int(t[:2]) * 60 + int(t[3:]) for t in self.working_hours.split("-"))
        return Decimal(end - start) / 60 * len(self.working_days)


class RemediationSettings(BaseModel):
    auto_shutdown_time: str = Field("19:00", description="daily time of created schedules")
    auto_shutdown_time_zone: str = Field(
        "UTC", description="Windows time zone id of created schedules, e.g. W. Europe Standard Time"
    )
    notification_email: str | None = Field(
        None, description="who is mailed 30 minutes before a created schedule shuts a VM down"
    )
    max_actions: int = Field(25, ge=1, description="apply refuses a larger plan unless told")
    max_plan_age_hours: float = Field(24, gt=0, description="apply refuses an older plan")
    concurrency: int = Field(4, ge=1, le=32, description="resources changed at the same time")
    deallocate_timeout_seconds: int = Field(900, ge=1, description="wait for one deallocation")

    @field_validator("auto_shutdown_time")
    @classmethod
    def _time(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value.strip()):
            raise ValueError("must be a time of day like 19:00")
        return value.strip()

    @field_validator("notification_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError("must be an e-mail address")
        return value


class CostSettings(BaseModel):
    query: bool = Field(
        True,
        description="read daily cost from the Cost Management Query API (turn off when FOCUS "
        "exports cover every subscription)",
    )
    refetch_days: int = Field(
        3, ge=0, le=31, description="stored days fetched again each night: cost settles late"
    )
    exports: list[str] = Field(
        [],
        description="FOCUS export locations read each night: folders, files, or Blob URLs "
        "(https://ACCOUNT.blob.core.windows.net/CONTAINER/FOLDER)",
    )

    @field_validator("exports")
    @classmethod
    def _locations(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v.startswith("http://")]
        if bad:
            raise ValueError(f"Blob URLs must be https://: {bad[0]!r}")
        return [v.strip() for v in value if v.strip()]


class PtuSettings(BaseModel):
    window_days: int = Field(
        14, ge=1, le=30, description="days of hourly AI deployment metrics the PTU rules read"
    )
    min_hours: int = Field(24, ge=1, description="PTU rules: hours of data needed for a verdict")
    underused_p95_percent: Percent = Field(
        50, description="ptu-underused: p95 of hourly peak utilization below this"
    )
    target_percent: Percent = Field(
        80, gt=0, description="ptu-underused: utilization the right-sized PTU count would run at"
    )
    saturated_percent: Percent = Field(
        95, description="ptu-saturated: p95 of hourly peak utilization at or above this"
    )
    pricing_basis: Literal["hourly", "monthly-reservation", "yearly-reservation"] = Field(
        "hourly",
        description="how PTUs are billed where the store holds no cost for their account "
        "(otherwise read from amortized cost)",
    )
    catalog_file: Path | None = Field(
        None,
        description="CSV replacing rows of the PTU price table (same columns as "
        "finops/catalog/ptu_models.csv): negotiated prices",
    )

    @field_validator("catalog_file")
    @classmethod
    def _catalog(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        from finops.catalog import CatalogError, ptu_models

        try:
            ptu_models(str(value))
        except CatalogError as e:
            raise ValueError(str(e)) from None
        return value


class MailSettings(BaseModel):
    smtp_host: str | None = Field(None, description="SMTP server; unset: the report is not mailed")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port (587 STARTTLS, 465 SSL)")
    security: Literal["starttls", "ssl", "none"] = Field(
        "starttls", description="starttls, ssl (implicit TLS) or none (a plain internal relay)"
    )
    username: str | None = Field(None, description="SMTP login; unset: no login")
    password: SecretStr | None = Field(None, description="SMTP password (never logged)")
    sender: str = Field("finops@localhost", description="From address")
    recipients: list[str] = Field([], description="To addresses")
    timeout_seconds: int = Field(30, ge=1, description="SMTP connection timeout")
    ca_file: Path | None = Field(None, description="CA bundle to trust for the SMTP server")

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not re.fullmatch(r"[^@\s]+@[^@\s]+", value):
            raise ValueError("must be an e-mail address")
        return value

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not re.fullmatch(r"[^@\s]+@[^@\s]+", v)]
        if bad:
            raise ValueError(f"not an e-mail address: {bad[0]!r}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> MailSettings:
        if self.smtp_host and not self.recipients:
            raise ValueError("smtp_host is set but there are no recipients")
        if self.password is not None and not self.username:
            raise ValueError("a password needs a username")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.smtp_host)


class ScheduleSettings(BaseModel):
    cron: str = Field(
        "0 0 2 * * *",
        description="when the night runs: six fields, second minute hour day month weekday "
        "(the NCRONTAB form Azure Functions also reads)",
    )
    time_zone: str = Field("UTC", description="IANA time zone of the schedule")
    misfire_grace_seconds: int = Field(
        3600, ge=1, description="a night missed by less than this still runs"
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from finops.scheduler import trigger_fields

        trigger_fields(value)
        return value.strip()

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name like Europe/Paris"
            ) from None
        return value


class AzureSettings(BaseModel):
    arm_endpoint: str = Field("https://management.azure.com", description="Resource Manager URL")
    metrics_endpoint: str = Field(
        "https://{region}.metrics.monitor.azure.com",
        description="Metrics batch API URL; {region} is replaced by each region in use",
    )
    ca_file: Path | None = Field(None, description="extra CA bundle to trust (the simulator's)")
    gpu_metric_namespace: str = Field(
        "Telegraf/nvidia_smi", description="custom metric namespace of the GPU guest metric"
    )
    gpu_metric_name: str = Field("utilization_gpu", description="GPU utilisation metric name")
    gpu_memory_metric_name: str = Field(
        "memory_used", description="GPU memory used metric name (MiB per GPU)"
    )
    prices_endpoint: str = Field(
        "https://prices.azure.com", description="Azure Retail Prices API (no authentication)"
    )
    timeout_seconds: float = Field(60, gt=0, description="read timeout of one Azure request")
    retries: int = Field(4, ge=0, le=10, description="retries of a throttled or failed request")
    retry_backoff_max_seconds: float = Field(
        60, gt=0, description="longest wait between two tries (Retry-After included)"
    )
    retry_budget_seconds: float = Field(
        600, gt=0, description="longest time one Azure call may take, retries included"
    )
    concurrency: int = Field(
        4, ge=1, le=16, description="Azure calls in flight at once while collecting"
    )
    credential: Literal["default", "simulated"] = Field(
        "default",
        description="default: DefaultAzureCredential; simulated: a fixed token the simulator "
        "accepts (never valid against Azure)",
    )

    @field_validator("arm_endpoint", "metrics_endpoint")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value.rstrip("/")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FINOPS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    subscriptions: list[str] = Field(
        [], description="subscription ids to govern; empty means every one the identity can read"
    )
    db_url: str = Field("sqlite:///finops.db", description="SQLAlchemy URL of the store")
    reports_dir: Path = Field(Path("reports"), description="where reports are written")
    metrics_days: int = Field(7, ge=1, le=30, description="days of hourly metrics the rules read")
    cost_days: int = Field(30, ge=1, le=365, description="days of daily cost kept up to date")
    report_top_vms: int = Field(20, ge=1, le=200, description="VMs listed in the report")
    currency: str = Field(
        "USD", description="currency the report leads with (billed costs keep their own)"
    )
    exempt_tag: str = Field("finops-exempt=true", description="tag name=value that exempts")
    costs: CostSettings = CostSettings()
    rules: RuleSettings = RuleSettings()
    ptu: PtuSettings = PtuSettings()
    remediation: RemediationSettings = RemediationSettings()
    mail: MailSettings = MailSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    report_container_url: str | None = Field(
        None,
        description="Blob container URL the report is also uploaded to (needed on Azure "
        "Functions, which keep no disk)",
    )
    azure: AzureSettings = AzureSettings()

    @field_validator("subscriptions")
    @classmethod
    def _subscription_ids(cls, value: list[str]) -> list[str]:
        pattern = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
        bad = [s for s in value if not pattern.fullmatch(s.strip())]
        if bad:
            raise ValueError(f"not a subscription id (a GUID): {bad[0]!r}")
        return [s.strip().lower() for s in value]

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z]{3}", value):
            raise ValueError("must be a three-letter ISO 4217 code such as USD")
        return value.upper()

    @field_validator("exempt_tag")
    @classmethod
    def _exempt(cls, value: str) -> str:
        name, sep, tag_value = value.partition("=")
        if not sep or not name.strip() or not tag_value.strip():
            raise ValueError("must look like name=value, e.g. finops-exempt=true")
        return f"{name.strip()}={tag_value.strip()}"

    @model_validator(mode="after")
    def _db(self) -> Settings:
        if "://" not in self.db_url:
            raise ValueError("db_url must be a SQLAlchemy URL such as sqlite:///finops.db")
        return self

    @property
    def exempt(self) -> tuple[str, str]:
        name, _, value = self.exempt_tag.partition("=")
        return name, value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides) -> Settings:
    """Settings from the environment, the TOML file and `overrides`; ConfigError on a bad value."""
    cls = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file not found: {config_file}")
        try:
            tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {config_file} is not valid TOML: {e}") from None

        class FileSettings(Settings):
            model_config = SettingsConfigDict(toml_file=config_file)

        cls = FileSettings
    try:
        return cls(**overrides)
    except ValidationError as e:
        raise ConfigError(_first_error(e)) from None
    except SettingsError as e:  # e.g. a list variable that is not JSON
        raise ConfigError(f"bad setting: {e}") from None


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "settings"
    env = "FINOPS_" + "__".join(str(p).upper() for p in first["loc"] if isinstance(p, str))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"bad setting {where}: unknown setting"
    return f"bad setting {where} ({env}): {message}"


def reference_markdown() -> str:
    """Every setting as a Markdown table row: TOML name, variable, default, meaning."""

    def rows(model: type[BaseModel], env: str, toml: str):
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from rows(kind, f"{env}{name.upper()}__", f"{toml}{name}.")
                continue
            default = field.default
            if isinstance(default, list):
                variable = f"`{env}{name.upper()}` (JSON list)"
                shown = "`" + json.dumps(default) + "`"
            else:
                variable = f"`{env}{name.upper()}`"
                shown = "none" if default is None else f"`{default}`"
            yield f"| `{toml}{name}` | {variable} | {shown} | {field.description} |"

    header = "| setting (TOML) | environment variable | default | meaning |\n|---|---|---|---|\n"
    return header + "\n".join(rows(Settings, "FINOPS_", "")) + "\n"
