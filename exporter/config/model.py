"""The configuration model: targets, settings and collector queries, validated as one.

Every problem in a file is reported at once, each with the file and the key path, in a single
`ConfigError`, so an operator fixes a config in one pass instead of one error per restart.
Built-in queries are loaded through the same model as user queries: one schema, one validator.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg.conninfo
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.config.allowlist import HostAllowList, parse_rule
from exporter.config.authmodules import AuthModule, check_options, check_role
from exporter.config.errors import ConfigError
from exporter.config.safeyaml import MAX_SECRET_BYTES, load_yaml_file, parse_yaml, read_text
from exporter.config.targetfiles import read_target_files
from exporter.kinds import KINDS, KindName, kind_of
from exporter.kinds.serveraddress import dsn_host, dsn_server, server_addresses

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
QUERY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_LABELS = frozenset({"target", "le", "query", "reason"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_REF = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)\})")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as `500ms`, `5s`, `2m`, `1h`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 500ms or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 5s, 500ms or 2m, got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


def parse_server_version(value: Any) -> int:
    """A server_version_num from `160000`, `16`, `9.6` or `15.2`."""
    if isinstance(value, bool):
        raise ValueError("expected a PostgreSQL version such as 16, 9.6 or 160000")
    if isinstance(value, int):
        return value if value >= 10000 else value * 10000
    text = str(value).strip()
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?", text)
    if not m:
        raise ValueError(f"expected a PostgreSQL version such as 16, 9.6 or 160000, got {value!r}")
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    if major >= 10000:
        return major
    if major >= 10:
        return major * 10000 + minor
    return major * 10000 + minor * 100


def parse_max_server_version(value: Any) -> int:
    """The last server_version_num a max_version covers: a release named without its last part
    is all of it (`13` is every 13.x, `9.6` every 9.6.x, PgBouncer `1.18` every 1.18.x), where
    parse_server_version would stop at 13.0, 9.6.0 or 1.18.0; `15.2` and `160000` are exact."""
    exact = parse_server_version(value)  # validates the form, so the parts below are numbers
    parts = str(value).strip().split(".")
    major = int(parts[0])
    if major >= 10000:  # a server_version_num already
        return exact
    if len(parts) == 1:
        return exact + 9999  # a major alone: 13 -> 139999, 9 -> 99999, PgBouncer 1 -> 19999
    return exact + (99 if major < 10 else 0)  # 9.6 -> 90699, 1.18 -> 11899; 15.2 exact


Duration = Annotated[float, BeforeValidator(parse_duration)]
ServerVersion = Annotated[int, BeforeValidator(parse_server_version)]
MaxServerVersion = Annotated[int, BeforeValidator(parse_max_server_version)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(StrictModel):
    """One metric family made from the result set of a query."""

    name: str
    type: Literal["gauge", "counter", "gauge_histogram"] = "gauge"
    help: str = Field(min_length=1)
    labels: list[str] = []
    # A column, or columns renamed between server versions: the first the result has is used.
    value: str | list[str] = Field(min_length=1)
    scale: float = 1.0
    add: dict[str, float] = {}
    label_columns: dict[str, str] = {}
    aggregate: Literal["sum", "max"] = "sum"
    match: dict[str, str] = {}
    max_series: int | None = Field(default=None, ge=1)
    fold_labels: list[str] | None = None
    zero_fill: dict[str, list[str]] = {}
    bucket_column: str | None = None
    buckets_param: str | None = None
    sum_column: str | None = None
    warn: str | None = None

    @field_validator("name")
    @classmethod
    def _metric_name(cls, v: str) -> str:
        if not METRIC_NAME.match(v):
            raise ValueError(f"{v!r} is not a valid Prometheus metric name")
        return v

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: list[str]) -> list[str]:
        for label in v:
            if not LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{label!r} is not a valid Prometheus label name")
            if label in RESERVED_LABELS:
                raise ValueError(f"label {label!r} is reserved by the exporter")
        if len(set(v)) != len(v):
            raise ValueError("labels are listed more than once")
        return v

    @property
    def value_columns(self) -> list[str]:
        """The value column's names, in order of preference."""
        return [self.value] if isinstance(self.value, str) else list(self.value)

    def column(self, label: str) -> str:
        """The result column a label takes its values from."""
        return self.label_columns.get(label, label)

    @model_validator(mode="after")
    def _consistent(self) -> MetricSpec:
        unknown = set(self.label_columns) - set(self.labels)
        if unknown:
            raise ValueError(f"label_columns {sorted(unknown)} are not among labels")
        if self.fold_labels is not None:
            unknown = set(self.fold_labels) - set(self.labels)
            if unknown:
                raise ValueError(f"fold_labels {sorted(unknown)} are not among labels")
            if self.max_series is None:
                raise ValueError("fold_labels needs max_series")
        unknown = set(self.zero_fill) - set(self.labels)
        if unknown:
            raise ValueError(f"zero_fill labels {sorted(unknown)} are not among labels")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r}: a counter's name ends in _total")
        if self.type == "gauge_histogram":
            if not (self.bucket_column and self.buckets_param):
                raise ValueError("a gauge_histogram needs bucket_column and buckets_param")
        elif self.bucket_column or self.buckets_param or self.sum_column:
            raise ValueError(
                "bucket_column, buckets_param and sum_column belong to gauge_histogram only"
            )
        return self


class QuerySpec(StrictModel):
    """One SQL statement, run once per scrape (or per cache lifetime), feeding its metrics."""

    name: str
    help: str = ""
    sql: str = ""
    # A query that runs before this one in the scrape: this one has no SQL, its metrics read
    # that query's rows, whose SQL takes this one's params too (see merge_rows_from_params).
    rows_from: str | None = None
    target_kind: KindName = "postgres"
    min_version: ServerVersion | None = None
    max_version: MaxServerVersion | None = None
    timeout: Duration | None = None
    cache: Duration | None = None
    params: dict[str, Any] = {}
    metrics: list[MetricSpec] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _query_name(cls, v: str) -> str:
        if not QUERY_NAME.match(v):
            raise ValueError("a query name is lower case letters, digits and _")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> QuerySpec:
        if self.min_version and self.max_version and self.min_version > self.max_version:
            raise ValueError("min_version is above max_version")
        if bool(self.sql.strip()) == bool(self.rows_from):
            raise ValueError("a query has either sql or rows_from (another query's rows)")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError("two metrics of this query share a name")
        for metric in self.metrics:
            if metric.buckets_param is not None:
                bounds = self.params.get(metric.buckets_param)
                if (
                    not isinstance(bounds, list)
                    or not bounds
                    or not all(isinstance(b, int | float) for b in bounds)
                    or sorted(bounds) != bounds
                ):
                    raise ValueError(
                        f"metric {metric.name}: params.{metric.buckets_param} must be an "
                        "ascending list of numbers"
                    )
        return self


def _validate_dsn(v: str) -> str:
    try:
        psycopg.conninfo.conninfo_to_dict(v)
    except psycopg.ProgrammingError:
        # The parser's message may quote the DSN, password included: say only what it is.
        raise ValueError("not a valid libpq connection string or URI") from None
    return v


def _login_check_shorthand(value: Any) -> Any:
    """`login_check: true` is `login_check: {}`; `false` is no check."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


class LoginCheckSpec(StrictModel):
    """A fresh login, at most once per interval, to see what a new client sees."""

    interval: Duration = 60.0
    dsn: str | None = None
    password_file: Path | None = None
    timeout: Duration | None = None

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str | None) -> str | None:
        return None if v is None else _validate_dsn(v)


LogFormat = Literal["csvlog", "jsonlog", "stderr", "pgbouncer"]


class LogSpec(StrictModel):
    """Where a target's log is read from, and in which format (README, "Refused
    connections"); the reader is exporter/logs, driven by exporter/scrape/logfeed."""

    source: Literal["file", "remote"] = "file"
    # source: file: the log directory as seen from where the exporter runs. source: remote
    # reads the server's own log directory through pgce_read_log over the held connection.
    directory: Path | None = None
    format: LogFormat
    # The files of the format in the directory; default by format (*.csv, *.json, *.log).
    pattern: str | None = Field(default=None, min_length=1, max_length=200)
    # stderr: the server's log_line_prefix; when not given, the exporter reads it with SHOW
    # over the held connection.
    log_line_prefix: str | None = Field(default=None, max_length=1000)

    @field_validator("directory")
    @classmethod
    def _directory(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{str(v)!r} is not an absolute path")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None and "/" in v:
            raise ValueError("a file name pattern within the directory, without '/'")
        return v

    @model_validator(mode="after")
    def _needs(self) -> LogSpec:
        if self.source == "file" and self.directory is None:
            raise ValueError("directory is required with source: file")
        if self.source == "remote" and self.directory is not None:
            raise ValueError(
                "directory is for source: file; source: remote reads the server's own "
                "log_directory through pgce_read_log"
            )
        if self.format == "stderr" and self.log_line_prefix == "":
            raise ValueError(
                "log_line_prefix is empty: give the server's (SHOW log_line_prefix), for "
                "example '%m [%p] %q%u@%d %h ', or leave it out to have it read over the "
                "connection"
            )
        if self.format != "stderr" and self.log_line_prefix is not None:
            raise ValueError("log_line_prefix is for format stderr only")
        return self


class TargetSpec(StrictModel):
    """A PostgreSQL server, or a PgBouncer admin console, to scrape."""

    name: str = Field(min_length=1)
    dsn: str = Field(min_length=1)
    password_file: Path | None = None
    labels: dict[str, str] = {}
    connect_timeout: Duration = 5.0
    kind: KindName = "postgres"
    login_check: Annotated[LoginCheckSpec | None, BeforeValidator(_login_check_shorthand)] = None
    prepared_statements: bool = True
    # The join of poolers and servers (README, "Poolers against the server"): a PostgreSQL
    # target's `server` label (default: its address, normalized), and a PgBouncer target's
    # pooled databases mapped to the `server` label of the server each points to ("*": every
    # database not listed; default: the address SHOW DATABASES reports, normalized).
    server: str | None = Field(default=None, min_length=1, max_length=200)
    upstreams: dict[str, Annotated[str, Field(min_length=1, max_length=200)]] = {}
    log: LogSpec | None = None

    @model_validator(mode="after")
    def _join_by_kind(self) -> TargetSpec:
        if self.server is not None and self.kind != "postgres":
            raise ValueError(
                "server names a PostgreSQL target's server; on a pgbouncer target map its "
                "databases with upstreams instead"
            )
        if self.upstreams and self.kind != "pgbouncer":
            raise ValueError("upstreams maps a pgbouncer target's databases; not for postgres")
        return self

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, str]) -> dict[str, str]:
        for label in v:
            if not LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{label!r} is not a valid Prometheus label name")
            if label in RESERVED_LABELS:
                raise ValueError(f"label {label!r} is reserved by the exporter")
        return v

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str) -> str:
        return _validate_dsn(v)


class Settings(StrictModel):
    """Defaults that apply to every target and query."""

    scrape_timeout: Duration = 10.0
    query_timeout: Duration = 5.0
    lock_timeout: Duration = 1.0
    # How often the target_files globs are looked at for a change.
    target_files_refresh: Duration = 10.0
    # Targets whose queries run at once (tasks of the event loop). A target waiting for its
    # connection holds no place; beyond this many targets whose servers are slow at once, the
    # others queue.
    scrape_concurrency: int = Field(default=32, ge=1, le=1024)


class CollectorSettings(StrictModel):
    """Which built-in queries run, and their parameters."""

    disable: list[str] = []
    params: dict[str, dict[str, Any]] = {}


def _enabled_shorthand(value: Any) -> Any:
    """`sessions_page: true` is `sessions_page: {enabled: true}`."""
    return {"enabled": value} if isinstance(value, bool) else value


class SessionsPageSettings(StrictModel):
    """The /sessions page: the diagnosis through each target's held connection (off unless
    enabled: it shows who is connected from where, to whoever may open the exporter's pages)."""

    enabled: bool = False
    query_text: bool = False  # query texts can hold data and secrets: off unless asked for
    idle_age: Duration = Field(600.0, gt=0)
    long_query_age: Duration = Field(60.0, gt=0)
    # All the page's statements together; a scrape waiting for the held connection meanwhile
    # waits at most this long.
    timeout: Duration = Field(2.0, gt=0)


# Where the alerts' runbook_url points (alerts/thresholds.yaml, runbook_base).
_REPOSITORY = "https://github.com/pg-connections-exporter/pg-connections-exporter/blob/main"
DEFAULT_RUNBOOKS = f"{_REPOSITORY}/docs/runbooks"
DEFAULT_DASHBOARDS = f"{_REPOSITORY}/dashboards/README.md"


class LinkSettings(StrictModel):
    """Where the landing page sends an operator: the dashboards (in Grafana when its address is
    given, else how to install them) and the runbooks."""

    grafana: str | None = None
    dashboards: str = DEFAULT_DASHBOARDS
    runbooks: str = DEFAULT_RUNBOOKS


class UserPassSpec(StrictModel):
    """postgres_exporter's `userpass`: the login role, and its password unless in a file."""

    username: str = Field(min_length=1)
    password: str | None = None


class AuthModuleSpec(StrictModel):
    """How /probe logs in to a server from discovery (postgres_exporter's auth_modules)."""

    type: Literal["userpass"] = "userpass"
    userpass: UserPassSpec
    password_file: Path | None = None
    options: dict[str, str] = {}
    dbname: str = "postgres"
    role: str | None = None
    connect_timeout: Duration = 5.0

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, str]) -> dict[str, str]:
        problems = check_options(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("role")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        return None if v is None else check_role(v)

    @model_validator(mode="after")
    def _one_password(self) -> AuthModuleSpec:
        if self.password_file is not None and self.userpass.password is not None:
            raise ValueError("give userpass.password or password_file, not both")
        return self


class ProbeSpec(StrictModel):
    """Probes of servers from discovery (/probe?target=HOST&auth_module=NAME): off until
    allowed_hosts lists where they may go."""

    allowed_hosts: list[str] = []
    idle_timeout: Duration = 300.0
    max_targets: int = Field(default=100, ge=1)

    @field_validator("allowed_hosts")
    @classmethod
    def _rules(cls, v: list[str]) -> list[str]:
        return [parse_rule(rule) for rule in v]


def _levels(v: list[float]) -> list[float]:
    if any(not 0 < level <= 1 for level in v):
        raise ValueError("each level is a fraction of the limit, above 0 and at most 1")
    return sorted(set(v))


Levels = Annotated[list[float], AfterValidator(_levels)]


class SamplerSettings(StrictModel):
    """Between scrapes (exporter/sampling/, driven by scrape/samplers.py): one cheap sample per
    target every `interval` on its held connection, kept as peaks over `window` and seconds at
    each level.
    The levels' defaults are alerts/thresholds.yaml's (tests/unit/test_sampling.py holds them
    to it); exhaustion (1) is always counted."""

    enabled: bool = True
    # Configured targets; /probe targets (sampled only while they are probed); and the most
    # samples a second over all targets, past which every interval stretches evenly: 50 keeps
    # 1,000 targets within the fleet budget (each sampled every 20 s; docs/benchmarks.md).
    interval: Duration = Field(1.0, ge=0.1)
    probe_interval: Duration = Field(1.0, ge=0.1)
    max_samples_per_second: float = Field(50.0, gt=0)
    window: Duration = Field(300.0, ge=10, le=3600)
    # Utilization (slots in use / slots open to ordinary roles): PostgresConnectionsHigh's
    # and PostgresConnectionsCritical's.
    levels: Levels = [0.8, 0.9]
    # Client connections / max_client_conn: PgBouncerClientConnectionsNearLimit's.
    pgbouncer_levels: Levels = [0.8, 0.95]


class ConfigFile(StrictModel):
    """The top level of a configuration file."""

    targets: list[TargetSpec] = []
    target_files: list[str] = []
    auth_modules: dict[str, AuthModuleSpec] = {}
    probe: ProbeSpec = ProbeSpec()
    settings: Settings = Settings()
    collectors: CollectorSettings = CollectorSettings()
    queries: list[QuerySpec] = []
    sessions_page: Annotated[SessionsPageSettings, BeforeValidator(_enabled_shorthand)] = (
        SessionsPageSettings()
    )
    links: LinkSettings = LinkSettings()
    sampler: SamplerSettings = SamplerSettings()


@dataclass(frozen=True)
class LoginCheck:
    """A login check ready to run: its DSN with the password resolved."""

    conninfo: str = field(repr=False)
    interval: float
    timeout: float


@dataclass(frozen=True)
class Target:
    """A target ready to connect: the DSN with its password resolved."""

    name: str
    conninfo: str = field(repr=False)
    labels: Mapping[str, str]
    connect_timeout: float
    kind: KindName = "postgres"
    login_check: LoginCheck | None = None
    prepared_statements: bool = True
    server: str | None = None
    upstreams: Mapping[str, str] = field(default_factory=dict)
    log: LogSpec | None = None

    def server_label(self) -> str:
        """A PostgreSQL target's `server` label: as configured, else its DSN's address."""
        return self.server or dsn_server(self.conninfo)

    def upstream_servers(self, database: str, host: str, port: str) -> list[str]:
        """The `server` labels of a PgBouncer target's pooled database: as `upstreams` maps
        it, else the address SHOW DATABASES reports, a local one read as the pooler's host."""
        named = self.upstreams.get(database) or self.upstreams.get("*")
        if named:
            return [named]
        return server_addresses(host, port, local_to=dsn_host(self.conninfo))


@dataclass(frozen=True)
class Config:
    """A validated configuration: what the exporter runs."""

    targets: tuple[Target, ...]
    settings: Settings
    queries: tuple[QuerySpec, ...]
    source: str
    sessions_page: SessionsPageSettings = field(default_factory=SessionsPageSettings)
    links: LinkSettings = field(default_factory=LinkSettings)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    auth_modules: Mapping[str, AuthModule] = field(default_factory=dict)
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    # The target_files globs, absolute.
    target_files: tuple[str, ...] = ()

    @property
    def allowed_hosts(self) -> HostAllowList:
        return HostAllowList(tuple(self.probe.allowed_hosts))


def expand_env(node: Any, path: str, problems: list[str], source: str) -> Any:
    """Replace `${VAR}` in every string; `$$` is a literal `$`. Unset variables are problems."""
    if isinstance(node, dict):
        return {k: expand_env(v, _join(path, k), problems, source) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, f"{path}[{i}]", problems, source) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        name = m.group(2)
        if name not in os.environ:
            problems.append(f"{source}: {path}: environment variable {name} is not set")
            return ""
        return os.environ[name]

    return _ENV_REF.sub(substitute, node)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out or "(top level)"


def validation_problems(err: ValidationError, source: str, prefix: str = "") -> list[str]:
    problems = []
    for e in err.errors(include_url=False, include_input=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = _loc(loc)
        if prefix:
            where = prefix if where == "(top level)" else f"{prefix}.{where}"
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"{source}: {where}: {message}")
    return problems


def read_yaml(text: str, source: str) -> Any:
    """One YAML document, bounded in nesting and alias expansion (exporter.config.safeyaml)."""
    return parse_yaml(text, source)


def _numeric_param_problems(
    query: QuerySpec, overrides: Mapping[str, Any], where: str
) -> list[str]:
    """A parameter that is a number by default (a threshold such as young_seconds) must stay
    one: otherwise the query would fail on every scrape instead of the config failing once."""
    problems = []
    for key, value in overrides.items():
        default = query.params.get(key)
        is_number = isinstance(default, int | float) and not isinstance(default, bool)
        if is_number and (isinstance(value, bool) or not isinstance(value, int | float)):
            problems.append(
                f"{where}.{query.name}.{key}: expected a number (default {default}), got {value!r}"
            )
    return problems


def builtin_queries() -> list[QuerySpec]:
    """The queries shipped in `exporter/queries/`, each file named by its target kind
    (`TargetKind.query_files`), validated by the user schema."""
    problems: list[str] = []
    queries: list[QuerySpec] = []
    files = resources.files("exporter.queries")
    for kind in KINDS.values():
        for name in kind.query_files:
            source = f"built-in {name}"
            data = read_yaml(files.joinpath(name).read_text(encoding="utf-8"), source)
            for i, raw in enumerate((data or {}).get("queries", [])):
                try:
                    query = QuerySpec.model_validate(raw)
                except ValidationError as err:
                    problems += validation_problems(err, source, f"queries[{i}]")
                    continue
                if query.target_kind != kind.name:
                    problems.append(
                        f"{source}: queries[{i}].target_kind: {query.target_kind}, in a file "
                        f"of kind {kind.name}"
                    )
                queries.append(query)
    if problems:
        raise ConfigError(problems)
    return merge_rows_from_params(queries)


def merge_rows_from_params(queries: list[QuerySpec]) -> list[QuerySpec]:
    """Each query that others read the rows of (rows_from), with their params added to its
    own: its SQL computes their columns, with the parameters that are theirs to document and
    override (so a reader's parameters are named unlike its source's). A built-in reader
    disabled or not, its parameters are there for the SQL to take."""
    added: dict[str, dict[str, Any]] = {}
    for query in queries:
        if query.rows_from is not None:
            added.setdefault(query.rows_from, {}).update(query.params)
    return [
        query.model_copy(update={"params": {**query.params, **added[query.name]}})
        if query.name in added
        else query
        for query in queries
    ]


def _resolve_targets(specs: list[tuple[str, TargetSpec]], problems: list[str]) -> list[Target]:
    """`specs`: each target with where it was written (`file: targets[i]`)."""
    targets = []
    seen: dict[str, str] = {}
    for where, t in specs:
        if t.name in seen:
            problems.append(
                f"{where}.name: target name {t.name!r} is used twice (also at {seen[t.name]})"
            )
        seen.setdefault(t.name, where)
        conninfo = _with_password(t.dsn, t.password_file, f"{where}.password_file", problems)
        if conninfo is None:
            continue
        login_check = None
        if (check := t.login_check) is not None:
            login_conninfo = _with_password(
                check.dsn or conninfo,
                check.password_file,
                f"{where}.login_check.password_file",
                problems,
            )
            if login_conninfo is None:
                continue
            # One attempt at a time: a timeout longer than the interval only spaces them out.
            timeout = check.timeout or t.connect_timeout
            login_check = LoginCheck(login_conninfo, check.interval, timeout)
        conninfo = kind_of(t.kind).resolve_conninfo(conninfo, f"{where}.dsn", problems)
        _check_log_kind(t, where, problems)
        targets.append(
            Target(
                t.name,
                conninfo,
                dict(t.labels),
                t.connect_timeout,
                t.kind,
                login_check,
                t.prepared_statements,
                t.server,
                dict(t.upstreams),
                t.log,
            )
        )
    return targets


def _check_log_kind(t: TargetSpec, where: str, problems: list[str]) -> None:
    """PgBouncer writes its own log format; a PostgreSQL server never writes it."""
    if t.log is None:
        return
    if t.kind == "pgbouncer" and t.log.source == "remote":
        problems.append(
            f"{where}.log.source: a pgbouncer target's log cannot be read remotely (its "
            "console has no function to read it); use source: file"
        )
    elif t.kind == "pgbouncer" and t.log.format != "pgbouncer":
        problems.append(
            f"{where}.log.format: a pgbouncer target's log is format pgbouncer, not {t.log.format}"
        )
    elif t.kind != "pgbouncer" and t.log.format == "pgbouncer":
        problems.append(
            f"{where}.log.format: format pgbouncer is for kind: pgbouncer targets; a "
            f"{t.kind} target's log is csvlog, jsonlog or stderr"
        )


def _resolve_auth_modules(
    spec: ConfigFile, source: str, problems: list[str]
) -> dict[str, AuthModule]:
    modules = {}
    for name, m in spec.auth_modules.items():
        password = m.userpass.password
        if m.password_file is not None:
            password = _read_password(
                m.password_file, f"{source}: auth_modules.{name}.password_file", problems
            )
            if password is None:
                continue
        modules[name] = AuthModule(
            name,
            m.userpass.username,
            password,
            dict(m.options),
            m.dbname,
            m.role,
            m.connect_timeout,
        )
    return modules


def _with_password(
    conninfo: str, password_file: Path | None, where: str, problems: list[str]
) -> str | None:
    """The DSN with the password read from `password_file`, or None (a problem) if unreadable."""
    if password_file is None:
        return conninfo
    password = _read_password(password_file, where, problems)
    if password is None:
        return None
    return psycopg.conninfo.make_conninfo(conninfo, password=password)


def _read_password(password_file: Path, where: str, problems: list[str]) -> str | None:
    """A password file's first line, bounded and strictly UTF-8 (its bytes never quoted), or
    None with the problem added."""
    try:
        password = read_text(password_file, where, MAX_SECRET_BYTES, secret=True).rstrip("\r\n")
    except ConfigError as exc:
        problems += exc.problems
        return None
    if "\0" in password:
        problems.append(f"{where}: {password_file}: a password cannot contain a NUL byte")
        return None
    return password


def _seconds_params(
    defaults: dict[str, Any], overrides: dict[str, Any], where: str, problems: list[str]
) -> dict[str, Any]:
    """Parameters named `*_age` are seconds and also take a duration (`10m`); anything else
    there is a problem at load time, not a failing query at every scrape."""
    taken = dict(overrides)
    for key, value in overrides.items():
        if not key.endswith("_age") or key not in defaults:
            continue
        try:
            taken[key] = parse_duration(value)
        except ValueError as exc:
            problems.append(f"{where}.{key}: {exc}")
    return taken


def _select_queries(
    spec: ConfigFile, targets: list[TargetSpec], source: str, problems: list[str]
) -> list[QuerySpec]:
    builtins = {q.name: q for q in builtin_queries()}
    for i, name in enumerate(spec.collectors.disable):
        if name not in builtins:
            problems.append(
                f"{source}: collectors.disable[{i}]: no built-in query named "
                f"{name!r} (known: {', '.join(sorted(builtins))})"
            )
    selected = []
    for name, query in builtins.items():
        if name in spec.collectors.disable or query.rows_from in spec.collectors.disable:
            continue  # a built-in reading a disabled one's rows goes with it
        overrides = spec.collectors.params.get(name)
        if overrides:
            lent = _lent_params(builtins, name)
            unknown = set(overrides) - set(query.params)
            for key in sorted(unknown):
                problems.append(
                    f"{source}: collectors.params.{name}.{key}: query {name} has no "
                    f"parameter {key!r}"
                )
            for key in sorted(set(overrides) & set(lent)):
                problems.append(
                    f"{source}: collectors.params.{name}.{key}: a parameter of {lent[key]} "
                    f"(whose metrics read {name}'s rows): set it under "
                    f"collectors.params.{lent[key]}.{key}"
                )
            problems += _numeric_param_problems(
                query,
                {k: v for k, v in overrides.items() if not k.endswith("_age")},
                f"{source}: collectors.params",
            )
            overrides = _seconds_params(
                query.params, overrides, f"{source}: collectors.params.{name}", problems
            )
            try:
                query = QuerySpec.model_validate(
                    {**query.model_dump(), "params": {**query.params, **overrides}}
                )
            except ValidationError as err:
                problems += validation_problems(err, source, f"collectors.params.{name}")
        selected.append(query)
    for name in spec.collectors.params:
        if name not in builtins:
            problems.append(f"{source}: collectors.params.{name}: no built-in query named {name!r}")
    for i, query in enumerate(spec.queries):
        if query.name in builtins:
            problems.append(
                f"{source}: queries[{i}].name: {query.name!r} is a built-in query "
                "name; pick another"
            )
        selected.append(query)
    selected = merge_rows_from_params(selected)  # with the readers' overridden params
    _check_unique_metrics(selected, targets, source, problems)
    _check_rows_from(selected, source, problems)
    return selected


def _lent_params(builtins: dict[str, QuerySpec], name: str) -> dict[str, str]:
    """The parameters query `name` has only for the built-ins that read its rows, each with
    its reader: overridden under the reader, where they are documented, or they would be
    overwritten by the reader's value."""
    return {
        key: reader.name
        for reader in builtins.values()
        if reader.rows_from == name
        for key in reader.params
    }


def _check_rows_from(queries: list[QuerySpec], source: str, problems: list[str]) -> None:
    """A query reading another's rows needs that one to run before it, on the same targets."""
    earlier: dict[str, QuerySpec] = {}
    for query in queries:
        read = query.rows_from
        if read is not None:
            source_query = earlier.get(read)
            if source_query is None or source_query.rows_from is not None:
                problems.append(
                    f"{source}: query {query.name} reads the rows of {read!r}, which is not a "
                    "query with SQL listed before it"
                )
            elif (source_query.target_kind, source_query.cache) != (query.target_kind, None):
                problems.append(
                    f"{source}: query {query.name} reads the rows of {read!r}, which must be "
                    "for the same target kind and not cached"
                )
        earlier[query.name] = query


def _check_unique_metrics(
    queries: list[QuerySpec], targets: list[TargetSpec], source: str, problems: list[str]
) -> None:
    owner: dict[str, str] = {}
    constant_labels = {label for t in targets for label in t.labels}
    for query in queries:
        for metric in query.metrics:
            if metric.name in owner:
                problems.append(
                    f"{source}: queries: metric {metric.name} is produced by both "
                    f"{owner[metric.name]} and {query.name}"
                )
            owner[metric.name] = query.name
            clash = constant_labels & set(metric.labels)
            if clash:
                problems.append(
                    f"{source}: targets: constant labels {sorted(clash)} clash with "
                    f"labels of metric {metric.name}"
                )


def parse_config(data: Any, source: str, base_dir: Path | None = None) -> Config:
    """Validate already-parsed YAML data into a `Config`, or raise one `ConfigError`.
    `target_files` globs are relative to `base_dir` (the config file's directory)."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping with a 'targets' list"])
    data = expand_env(data, "", problems, source)
    try:
        spec = ConfigFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(problems + validation_problems(err, source)) from None
    if not (spec.targets or spec.target_files or spec.auth_modules):
        problems.append(f"{source}: targets: none: give targets, target_files or auth_modules")
    target_specs = [(f"{source}: targets[{i}]", t) for i, t in enumerate(spec.targets)]
    patterns = tuple(str((base_dir or Path.cwd()) / p) for p in spec.target_files)
    for file_source, i, raw in read_target_files(patterns, problems):
        raw = expand_env(raw, f"[{i}]", problems, file_source)
        try:
            target_specs.append((f"{file_source}: [{i}]", TargetSpec.model_validate(raw)))
        except ValidationError as err:
            problems += validation_problems(err, file_source, f"[{i}]")
    all_specs = [t for _, t in target_specs]
    targets = _resolve_targets(target_specs, problems)
    queries = _select_queries(spec, all_specs, source, problems)
    modules = _resolve_auth_modules(spec, source, problems)
    if problems:
        raise ConfigError(problems)
    return Config(
        tuple(targets),
        spec.settings,
        tuple(queries),
        source,
        auth_modules=modules,
        probe=spec.probe,
        target_files=patterns,
        sessions_page=spec.sessions_page,
        links=spec.links,
        sampler=spec.sampler,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file."""
    source = str(path)
    return parse_config(load_yaml_file(path, source), source, Path(path).parent)


def single_target_config(dsn: str, source: str) -> Config:
    """The no-file mode of postgres_exporter: one target from `--dsn` or DATA_SOURCE_NAME."""
    return parse_config({"targets": [{"name": "default", "dsn": dsn}]}, source)
