"""``sql``: read-only, parameterised SQL queries published as REST services.

Options (``services[].options`` in server.yaml):

``database``
    ``sqlite:///relative/to/state.db``, ``sqlite:////absolute/path.db`` or ``postgresql://…``.
``queries``
    Path of a YAML file (relative to the state directory) mapping service codes to queries.
``max_rows``
    Default cap on rows per answer (1000); a query may lower or raise it with its own ``max_rows``.
``statement_timeout``
    Seconds a query may run before the database cancels it (default 10).

The queries file::

    persons:                                   # the service code
      sql: SELECT pin, name, birth_date FROM persons WHERE pin = :pin
      params: [pin]                            # or [{name: pin, pattern: "[0-9A-Z]{7}"}]
      from: path                               # path (values from the URL path) or query (?pin=…), default query
      path: /{pin}                             # with from: path; default: one segment per parameter, in order
      max_rows: 1                              # optional

A request is REST ``GET`` only.  Its parameters are validated (every declared parameter present exactly once, no
others, each matching its ``pattern`` — by default up to 256 printable characters) and **bound** by the database
driver, never put into SQL text; anything that fails is a 400 business error.  The answer is a JSON list of
objects, one per row, keyed by column name (dates as ISO 8601, decimals as exact strings, bytes as base64).  More
rows than the cap is a 422 business error, never a silently shortened list.

Only a single ``SELECT`` (or ``WITH … SELECT``) is accepted, checked when the adapter is created, so a bad file
stops the security server at start-up instead of at the first request:

* lexically: one statement, starting with ``SELECT`` or ``WITH``, whose ``:name`` placeholders are exactly the
  declared parameters;
* SQLite: the database is opened ``?mode=ro`` with ``PRAGMA query_only``, and an authorizer allows only reads,
  selects and function calls while the statement is compiled (``EXPLAIN``), which is what
  ``sqlite3_stmt_readonly`` would tell — Python's :mod:`sqlite3` does not expose that function, and the
  authorizer is stricter: it also refuses ``ATTACH``, ``PRAGMA`` and the rest;
* PostgreSQL: the statement's plan (``EXPLAIN``, which does not run it) in a ``READ ONLY`` transaction must not
  modify or lock rows.

Every request runs the same way, inside a read-only connection or transaction with the statement timeout.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import json
import re
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
import yaml

from adapters.base import AdapterContext, AdapterRequest, AdapterResponse, ServiceDescription, register
from bridge.errors import ConfigError
from bridge.message import Protocol
from security_server.backends import ServiceFailed

__all__ = ["DEFAULT_MAX_ROWS", "Param", "Query", "SqlAdapter", "factory", "load_queries"]

#: Rows per answer when neither the adapter nor the query sets ``max_rows``.
DEFAULT_MAX_ROWS = 1000
#: Seconds a statement may run when ``statement_timeout`` is not set.
DEFAULT_STATEMENT_TIMEOUT_S = 10.0
#: What a parameter may hold when its query gives no ``pattern``: printable text, no control characters.
DEFAULT_PATTERN = r"[^\x00-\x1f\x7f]{1,256}"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CODE = re.compile(r"[A-Za-z0-9_.\-]+")
# SQL tokens that matter for placeholders and statement boundaries; everything else passes through unchanged.
_TOKENS = re.compile(
    r"""
      (?P<string>'(?:[^']|'')*')
    | (?P<ident>"(?:[^"]|"")*")
    | (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*.*?\*/)
    | (?P<open_comment>/\*)
    | (?P<dollar>\$[A-Za-z_0-9]*\$)
    | (?P<cast>::)
    | (?P<param>:[A-Za-z_][A-Za-z0-9_]*)
    | (?P<semicolon>;)
    | (?P<percent>%)
    | (?P<quote>['"])
    | (?P<other>[^'"\-/$:;%]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)
# SQLite authorizer actions a SELECT needs; every other action (writes, ATTACH, PRAGMA, …) is denied.
_SQLITE_ALLOWED = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, 33})  # RECURSIVE
_SQLITE_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
# PostgreSQL plan nodes that change or lock rows.
_PG_FORBIDDEN_NODES = frozenset({"ModifyTable", "LockRows"})


@dataclass(frozen=True)
class Param:
    """One bound parameter: its name and the pattern every value must match in full."""

    name: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Query:
    """One service's query, validated lexically (the database checks come later, in :class:`SqlAdapter`)."""

    code: str
    sql: str
    params: tuple[Param, ...]
    source: Literal["query", "path"]
    path: str | None
    max_rows: int

    @property
    def path_regex(self) -> re.Pattern[str] | None:
        """The path template as a regular expression with one named group per ``{param}``, if there is one."""
        if self.path is None:
            return None
        out, pos = [], 0
        for match in re.finditer(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", self.path):
            out.append(re.escape(self.path[pos : match.start()]))
            out.append(f"(?P<{match.group(1)}>[^/]+)")
            pos = match.end()
        out.append(re.escape(self.path[pos:]))
        return re.compile("".join(out))

    def for_postgresql(self) -> str:
        """The SQL with ``:name`` placeholders as psycopg's ``%(name)s`` (and literal ``%`` doubled)."""
        out = []
        for token in _TOKENS.finditer(self.sql):
            kind, text = token.lastgroup, token.group()
            if kind == "param":
                out.append(f"%({text[1:]})s")
            elif kind == "percent":
                out.append("%%")
            else:
                out.append(text)
        return "".join(out)


# Loading -------------------------------------------------------------------------------------------------------


def _check_sql(where: str, sql: str, names: Sequence[str]) -> str:
    """Lexical checks: one SELECT/WITH statement whose placeholders are exactly ``names``; returns it trimmed."""
    placeholders: list[str] = []
    words: list[str] = []
    semicolon_at: int | None = None
    for token in _TOKENS.finditer(sql):
        kind = token.lastgroup
        if kind == "dollar":
            raise ConfigError(f"{where}: dollar-quoted strings are not supported in queries")
        if kind == "quote":
            raise ConfigError(f"{where}: unterminated quoted string or identifier")
        if kind == "open_comment":
            raise ConfigError(f"{where}: unterminated comment")
        if kind == "block_comment" or kind == "line_comment":
            continue
        if semicolon_at is not None and token.group().strip():
            raise ConfigError(f"{where}: only a single statement is allowed")
        if kind == "semicolon":
            semicolon_at = token.start()
        elif kind == "param":
            placeholders.append(token.group()[1:])
        elif kind == "other" and not words:
            words.extend(re.findall(r"[A-Za-z_]+", token.group())[:1])
    if not words or words[0].upper() not in ("SELECT", "WITH"):
        raise ConfigError(f"{where}: only SELECT queries are allowed (the statement must start with SELECT or WITH)")
    unknown = sorted(set(placeholders) - set(names))
    unused = sorted(set(names) - set(placeholders))
    if unknown:
        raise ConfigError(f"{where}: placeholders not declared in params: {', '.join(unknown)}")
    if unused:
        raise ConfigError(f"{where}: params not used in the SQL: {', '.join(unused)}")
    return (sql[:semicolon_at] if semicolon_at is not None else sql).strip()


def _param(where: str, raw: Any) -> Param:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"{where}: each param is a name or a mapping with 'name' (and optional 'pattern')")
    name = raw["name"]
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: param name {name!r} must be a letter or _ followed by letters, digits or _")
    unknown = set(raw) - {"name", "pattern"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys for param {name}: {', '.join(sorted(map(str, unknown)))}")
    pattern = raw.get("pattern", DEFAULT_PATTERN)
    try:
        return Param(name, re.compile(str(pattern)))
    except re.error as exc:
        raise ConfigError(f"{where}: param {name}: invalid pattern ({exc})") from None


def _query(file: Path, code: str, raw: Any, default_max_rows: int) -> Query:
    where = f"{file}: {code}"
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise ConfigError(f"{file}: {code!r} is not a service code")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with sql, params and from")
    unknown = set(raw) - {"sql", "params", "from", "path", "max_rows"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys: {', '.join(sorted(map(str, unknown)))}")
    sql = raw.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise ConfigError(f"{where}.sql: required, the SELECT statement")
    raw_params = raw.get("params", [])
    if not isinstance(raw_params, list):
        raise ConfigError(f"{where}.params: expected a list")
    params = tuple(_param(f"{where}.params", p) for p in raw_params)
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.params: a parameter is declared twice")
    source = raw.get("from", "query")
    if source not in ("query", "path"):
        raise ConfigError(f"{where}.from: must be 'query' or 'path' (got {source!r})")
    path = raw.get("path")
    if path is None and source == "path":
        path = "".join(f"/{{{name}}}" for name in names)
    if path is not None:
        if not isinstance(path, str) or not (path == "" or path.startswith("/")):
            raise ConfigError(f"{where}.path: must be empty or start with '/'")
        in_path = re.findall(r"\{([^}]*)\}", path)
        expected = names if source == "path" else []
        if sorted(in_path) != sorted(expected):
            raise ConfigError(
                f"{where}.path: its {{placeholders}} must be exactly the params"
                + (" (from: path)" if source == "path" else " (none, as params come from the query)")
            )
    max_rows = raw.get("max_rows", default_max_rows)
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows <= 0:
        raise ConfigError(f"{where}.max_rows: must be a positive integer")
    return Query(code, _check_sql(f"{where}.sql", sql, names), params, source, path, max_rows)


def load_queries(file: Path, default_max_rows: int = DEFAULT_MAX_ROWS) -> dict[str, Query]:
    """Read and check the queries file (every error names the file and the service code)."""
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the queries file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(doc, Mapping) or not doc:
        raise ConfigError(f"{file}: expected a mapping of service codes to queries")
    return {str(code): _query(file, code, raw, default_max_rows) for code, raw in doc.items()}


# Databases -----------------------------------------------------------------------------------------------------


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    """Allow what a SELECT needs, nothing else (applied while statements compile)."""
    if action not in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _SQLITE_DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro`` (file level), ``query_only`` (engine) and the SELECT-only authorizer."""
    conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    conn.set_authorizer(_sqlite_authorizer)
    return conn


def _plan_nodes(plan: Any) -> Iterable[str]:
    if isinstance(plan, Mapping):
        node = plan.get("Node Type")
        if isinstance(node, str):
            yield node
        for value in plan.values():
            yield from _plan_nodes(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from _plan_nodes(item)


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    raise TypeError(f"cannot represent {type(value).__name__} in JSON")


class _InvalidInput(Exception):
    """The caller's parameter values were refused (a 400 answer, not a fault)."""


class SqlAdapter:
    """Answers REST GETs with the rows of the service's query; see the module docstring for the rules."""

    def __init__(
        self,
        database: str,
        queries: Mapping[str, Query],
        *,
        state_dir: Path = Path("."),
        statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
    ) -> None:
        self.queries = dict(queries)
        self.statement_timeout_s = statement_timeout_s
        self._sqlite_path: Path | None = None
        self._pg_url: str | None = None
        if database.lower().startswith("sqlite:///"):
            raw = urllib.parse.unquote(database[len("sqlite:///") :].partition("?")[0])
            path = Path(raw)
            self._sqlite_path = path if path.is_absolute() else (state_dir / path).resolve()
            if not self._sqlite_path.is_file():
                raise ConfigError(f"adapter sql: option 'database': no SQLite database at {self._sqlite_path}")
        elif database.lower().startswith(("postgresql://", "postgres://")):
            self._pg_url = database
        else:
            raise ConfigError("adapter sql: option 'database' must be sqlite:///FILE or postgresql://…")
        self._check_statements()

    # (load) The database confirms every statement is a single read-only SELECT, without running it.

    def _check_statements(self) -> None:
        if self._sqlite_path is not None:
            conn = _sqlite_connect(self._sqlite_path)
            try:
                for query in self.queries.values():
                    try:
                        conn.execute(f"EXPLAIN {query.sql}", {p.name: None for p in query.params})
                    except sqlite3.Error as exc:
                        raise ConfigError(
                            f"adapter sql: query {query.code} is not a single read-only SELECT "
                            f"this database accepts ({exc})"
                        ) from None
            finally:
                conn.close()
            return
        assert self._pg_url is not None
        try:
            with psycopg.connect(self._pg_url, autocommit=False, connect_timeout=10) as pg:
                pg.read_only = True
                for query in self.queries.values():
                    try:
                        row = pg.execute(
                            f"EXPLAIN (FORMAT JSON) {query.for_postgresql()}", {p.name: None for p in query.params}
                        ).fetchone()
                    except psycopg.Error as exc:
                        pg.rollback()
                        raise ConfigError(
                            f"adapter sql: query {query.code} is not a single read-only SELECT "
                            f"this database accepts ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
                        ) from None
                    forbidden = _PG_FORBIDDEN_NODES.intersection(_plan_nodes(row[0] if row else None))
                    if forbidden:
                        raise ConfigError(
                            f"adapter sql: query {query.code} would modify or lock rows "
                            f"({', '.join(sorted(forbidden))})"
                        )
                pg.rollback()
        except psycopg.OperationalError as exc:
            raise ConfigError(
                f"adapter sql: cannot connect to the database to check the queries ({exc.__class__.__name__})"
            ) from None

    def describe(self) -> list[ServiceDescription]:
        """One REST service per query, each with a small OpenAPI 3 document of its GET operation."""
        return [
            ServiceDescription(code, "REST", f"{code} (SQL query)", _openapi(query))
            for code, query in self.queries.items()
        ]

    # Requests --------------------------------------------------------------------------------------------------

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Validate and bind the parameters, run the query read-only, answer the rows as a JSON list."""
        code = request.header.service.service_code
        if request.protocol is not Protocol.REST:
            raise ConfigError(f"adapter sql serves REST services only; {code} is {request.protocol}")
        query = self.queries.get(code)
        if query is None:
            raise ConfigError(f"adapter sql: no query for service {code} in its queries file")
        if request.method != "GET":
            return _error(405, "method_not_allowed", "this service answers GET only", (("Allow", "GET"),))
        try:
            values = _bind(query, request.path, request.query)
        except LookupError as exc:
            return _error(404, "not_found", str(exc))
        except _InvalidInput as exc:
            return _error(400, "invalid_parameter", str(exc))
        try:
            if self._sqlite_path is not None:
                columns, rows = await asyncio.to_thread(self._run_sqlite, query, values)
            else:
                columns, rows = await self._run_postgresql(query, values)
        except _InvalidInput as exc:
            return _error(400, "invalid_parameter", str(exc))
        if len(rows) > query.max_rows:
            return _error(422, "too_many_rows", f"the query matched more than {query.max_rows} rows; narrow it down")
        body = json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=_json_value)
        return AdapterResponse(200, body.encode(), "application/json")

    def _run_sqlite(self, query: Query, values: dict[str, str]) -> tuple[list[str], list[tuple[Any, ...]]]:
        assert self._sqlite_path is not None
        deadline = time.monotonic() + self.statement_timeout_s
        try:
            conn = _sqlite_connect(self._sqlite_path)
            try:
                # The statement timeout: SQLite calls this every 10 000 VM steps and aborts when it returns true.
                conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
                cursor = conn.execute(query.sql, values)
                rows = cursor.fetchmany(query.max_rows + 1)
                columns = [d[0] for d in cursor.description or ()]
                return columns, rows
            finally:
                conn.close()
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise ServiceFailed(f"the query did not finish within {self.statement_timeout_s:g} s") from None
            raise ServiceFailed("the service's database failed") from None
        except sqlite3.Error:
            raise ServiceFailed("the service's database failed") from None

    async def _run_postgresql(self, query: Query, values: dict[str, str]) -> tuple[list[str], list[tuple[Any, ...]]]:
        assert self._pg_url is not None
        try:
            async with await psycopg.AsyncConnection.connect(self._pg_url, autocommit=False) as conn:
                await conn.set_read_only(True)
                async with conn.cursor() as cursor:
                    timeout_ms = str(int(self.statement_timeout_s * 1000))
                    await cursor.execute("SELECT set_config('statement_timeout', %s, true)", (timeout_ms,))
                    try:
                        await cursor.execute(query.for_postgresql(), values)
                    except psycopg.errors.DataError:
                        # Class 22 (invalid text for an integer or date column, say): the caller's value.
                        raise _InvalidInput("a parameter's value does not fit the column it is compared with") from None
                    rows = await cursor.fetchmany(query.max_rows + 1)
                    columns = [d.name for d in cursor.description or ()]
                await conn.rollback()
                return columns, rows
        except psycopg.errors.QueryCanceled:
            raise ServiceFailed(f"the query did not finish within {self.statement_timeout_s:g} s") from None
        except psycopg.Error:
            raise ServiceFailed("the service's database failed") from None


def _bind(query: Query, path: str, raw_query: str) -> dict[str, str]:
    """The parameter values of one request, checked; raises LookupError (no such path) or _InvalidInput."""
    values: dict[str, str] = {}
    regex = query.path_regex
    if regex is not None:
        match = regex.fullmatch(path)
        if match is None:
            raise LookupError(f"no such resource: {path or '/'}")
        values.update({k: urllib.parse.unquote(v, errors="strict") for k, v in match.groupdict().items()})
    try:
        pairs = urllib.parse.parse_qsl(raw_query, keep_blank_values=True, strict_parsing=bool(raw_query))
    except (ValueError, UnicodeError):
        raise _InvalidInput("the query string is malformed") from None
    names = [name for name, _ in pairs]
    allowed = {p.name for p in query.params} if query.source == "query" else set()
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise _InvalidInput(f"unknown query parameters: {', '.join(unknown)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise _InvalidInput(f"query parameters given more than once: {', '.join(repeated)}")
    values.update(pairs)
    for param in query.params:
        value = values.get(param.name)
        if value is None:
            raise _InvalidInput(f"missing parameter: {param.name}")
        if not param.pattern.fullmatch(value):
            raise _InvalidInput(f"parameter {param.name} is not in the expected form")
    return values


def _error(status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> AdapterResponse:
    return AdapterResponse(
        status, json.dumps({"error": code, "message": message}).encode(), "application/json", headers
    )


def _openapi(query: Query) -> bytes:
    parameters = [
        {
            "name": p.name,
            "in": query.source,
            "required": True,
            "schema": {"type": "string", "pattern": f"^(?:{p.pattern.pattern})$"},
        }
        for p in query.params
    ]
    error = {"description": "Business error", "content": {"application/json": {"schema": {"type": "object"}}}}
    doc = {
        "openapi": "3.0.3",
        "info": {"title": f"{query.code} (SQL query)", "version": "1"},
        "paths": {
            (query.path or "/"): {
                "get": {
                    "operationId": query.code,
                    "parameters": parameters,
                    "responses": {
                        "200": {
                            "description": f"Matching rows (at most {query.max_rows})",
                            "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
                        },
                        "400": error,
                        "404": error,
                        "422": error,
                    },
                }
            }
        },
    }
    return json.dumps(doc, indent=2).encode()


def _positive(options: Mapping[str, str], key: str, default: float) -> float:
    raw = options.get(key)
    if raw is None:
        return default
    try:
        value = float(str(raw))
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(f"adapter sql: option {key!r} must be a positive number (got {raw!r})")
    return value


def factory(context: AdapterContext) -> SqlAdapter:
    """Make the ``sql`` adapter from its options (``database``, ``queries``, ``max_rows``, ``statement_timeout``)."""
    options = context.options
    database = str(options.get("database", "")).strip()
    if not database:
        raise ConfigError("adapter sql: option 'database' is required (sqlite:///FILE or postgresql://…)")
    queries_file = str(options.get("queries", "")).strip()
    if not queries_file:
        raise ConfigError("adapter sql: option 'queries' is required (a YAML file of service code → query)")
    max_rows = _positive(options, "max_rows", DEFAULT_MAX_ROWS)
    if max_rows != int(max_rows):
        raise ConfigError("adapter sql: option 'max_rows' must be a whole number")
    path = Path(queries_file)
    queries = load_queries(path if path.is_absolute() else context.state_dir / path, int(max_rows))
    return SqlAdapter(
        database,
        queries,
        state_dir=context.state_dir,
        statement_timeout_s=_positive(options, "statement_timeout", DEFAULT_STATEMENT_TIMEOUT_S),
    )


register("sql", factory)
