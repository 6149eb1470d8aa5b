"""Deterministic synthetic data for the four registries, in ONE database so that they agree with each other.

:func:`generate` fills a SQLite file or a PostgreSQL database (see :mod:`adapters.registries.db` for the URL forms)
with a synthetic population and what the tax service, the labor contract notification system and the e-license
registry know about it.  Everything derives from the seed: the same ``seed`` and ``scale`` give the same rows in
the same tables on every run and on both backends (:func:`digest` hashes them to check).  The data is "as of"
:data:`REFERENCE_DATE`; dates are ISO 8601 text and money is integer qəpik (1 AZN = 100 qəpik), so both backends
hold identical values.

Identifiers (instance AZ):

* PIN (FİN): 7 characters from ``0-9`` and ``A-Z`` without ``I`` and ``O``, e.g. ``5ZK7P2M``; unique per person;
* TIN (VÖEN): 10 digits; the last is ``1`` for a legal entity and ``2`` for a natural person;
* identity card: ``AZE`` + 8 digits; passport: ``C`` + 8 digits;
* labor contract: ``LC-`` + 12 hex digits; license: ``LIC-`` + year + ``-`` + 8 hex digits (both scrambled, as
  the labor and licensing registries number new ones).

Tables (their DDL is :data:`SCHEMA`):

``registry_meta(key, value)``
    ``seed``, ``scale``, ``reference_date``, ``generator_version``.
``addresses(id, city, district, street, building, apartment, postal_code)``
    Registered addresses; ``district`` only in Baku, ``apartment`` NULL for a house.
``persons(pin, first_name, last_name, patronymic, birth_date, gender, address_id)``
    ``gender`` is ``male`` or ``female``; a household shares its address; the patronymic is the father's first name
    with ``oğlu`` (son) or ``qızı`` (daughter).
``identity_documents(number, pin, type, issued, expires)``
    ``type`` ``id_card`` (everyone has one, some expired) or ``passport`` (some adults).
``family_links(pin, relation, related_pin)``
    Both directions: ``spouse``/``spouse``, and ``father``/``mother`` of a child with ``child`` the other way.
``taxpayers(tin, type, pin, name, legal_form, registered, status, address_id)``
    ``type`` ``individual`` (``pin`` set) or ``legal_entity`` (``pin`` NULL, ``legal_form`` MMC/ASC/QSC/PHŞ);
    ``status`` ``active``, ``inactive`` (individuals) or ``liquidated`` (legal entities).
``tax_debts(tin, tax_type, amount_qepik, since)``
    Outstanding debts; a taxpayer without rows has no debt.
``income_declarations(tin, year, income_qepik, tax_qepik, declared_on)``
    Declared annual income (individuals) or turnover (legal entities) for :data:`INCOME_YEARS`.
``employers(tin, name, sector, city)``
    Legal-entity taxpayers that employ people (``tin`` is in ``taxpayers``).
``labor_contracts(id, employer_tin, employee_pin, position, salary, currency, start_date, end_date, status,
terminated_on, termination_reason)``
    The labor registry's table (it registers and terminates contracts in it too).  ``salary`` is the monthly
    gross salary as decimal text in ``currency`` (AZN), e.g. ``"850.00"``; ``end_date`` is set for fixed-term
    contracts; ``status`` is ``active`` or ``terminated`` (then ``terminated_on`` and ``termination_reason``,
    one of :data:`TERMINATION_REASONS`, are set).  A person's earlier contracts were terminated by the time the
    next one started; only the latest may be active.
``licenses(number, holder_tin, activity, issued_on, expires_on, status, application_id)``
    The licensing registry's table (it issues licenses into it, ``application_id`` naming the application; NULL
    for generated ones).  Licenses run :data:`LICENSE_YEARS` years; ``status`` is ``active``, ``suspended``,
    ``revoked`` or ``expired``.

Speed: columns are built with numpy, vectorised, and loaded in one transaction (``executemany`` with bulk-load
pragmas on SQLite, ``COPY`` on PostgreSQL); tables keyed by an identifier are ``WITHOUT ROWID`` on SQLite and
loaded in key order, and the secondary indexes are built after loading.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from adapters.registries.db import Loader, RegistryDb
from bridge.errors import ConfigError

__all__ = [
    "INCOME_YEARS",
    "LICENSE_YEARS",
    "REFERENCE_DATE",
    "SCALES",
    "SCHEMA",
    "TABLES",
    "TERMINATION_REASONS",
    "GenerationReport",
    "Scale",
    "digest",
    "generate",
]

Arr = npt.NDArray[Any]
ScaleName = Literal["small", "medium", "national"]

#: Version of the generator's algorithm: a change to it changes the data for a given seed.
GENERATOR_VERSION = "1"
#: The day the synthetic registries describe ("today" for the data): after the 2025 income declarations.
REFERENCE_DATE = dt.date(2026, 4, 1)
#: Years with income declarations.
INCOME_YEARS = (2023, 2024, 2025)
#: How many years a license runs.
LICENSE_YEARS = 5
#: Why contracts end (``end_of_term`` for a fixed-term contract that ran out).
TERMINATION_REASONS = ("end_of_term", "resignation", "agreement", "dismissal", "redundancy")


@dataclass(frozen=True)
class Scale:
    """How many persons, employers (legal entities that employ), labor contracts and licenses to generate."""

    persons: int
    employers: int
    contracts: int
    licenses: int


SCALES: dict[str, Scale] = {
    "small": Scale(persons=2_000, employers=200, contracts=3_000, licenses=150),
    "medium": Scale(persons=100_000, employers=10_000, contracts=150_000, licenses=7_500),
    "national": Scale(persons=1_000_000, employers=100_000, contracts=1_500_000, licenses=75_000),
}

#: Tables in load order, with the column list each is dumped and hashed in (the key columns first).
TABLES: dict[str, tuple[str, ...]] = {
    "registry_meta": ("key", "value"),
    "addresses": ("id", "city", "district", "street", "building", "apartment", "postal_code"),
    "persons": ("pin", "first_name", "last_name", "patronymic", "birth_date", "gender", "address_id"),
    "identity_documents": ("number", "pin", "type", "issued", "expires"),
    "family_links": ("pin", "relation", "related_pin"),
    "taxpayers": ("tin", "type", "pin", "name", "legal_form", "registered", "status", "address_id"),
    "tax_debts": ("tin", "tax_type", "amount_qepik", "since"),
    "income_declarations": ("tin", "year", "income_qepik", "tax_qepik", "declared_on"),
    "employers": ("tin", "name", "sector", "city"),
    "labor_contracts": (
        "id",
        "employer_tin",
        "employee_pin",
        "position",
        "salary",
        "currency",
        "start_date",
        "end_date",
        "status",
        "terminated_on",
        "termination_reason",
    ),
    "licenses": ("number", "holder_tin", "activity", "issued_on", "expires_on", "status", "application_id"),
}

#: The registries' tables.  ``{wr}`` is ``WITHOUT ROWID`` on SQLite (the table is its primary-key b-tree).
SCHEMA: tuple[str, ...] = (
    "CREATE TABLE registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE addresses (id BIGINT PRIMARY KEY, city TEXT NOT NULL, district TEXT, street TEXT NOT NULL,"
    " building TEXT NOT NULL, apartment TEXT, postal_code TEXT NOT NULL)",
    "CREATE TABLE persons (pin TEXT PRIMARY KEY, first_name TEXT NOT NULL, last_name TEXT NOT NULL,"
    " patronymic TEXT NOT NULL, birth_date TEXT NOT NULL, gender TEXT NOT NULL, address_id BIGINT NOT NULL) {wr}",
    "CREATE TABLE identity_documents (number TEXT PRIMARY KEY, pin TEXT NOT NULL, type TEXT NOT NULL,"
    " issued TEXT NOT NULL, expires TEXT NOT NULL) {wr}",
    "CREATE TABLE family_links (pin TEXT NOT NULL, relation TEXT NOT NULL, related_pin TEXT NOT NULL,"
    " PRIMARY KEY (pin, relation, related_pin)) {wr}",
    "CREATE TABLE taxpayers (tin TEXT PRIMARY KEY, type TEXT NOT NULL, pin TEXT, name TEXT NOT NULL,"
    " legal_form TEXT, registered TEXT NOT NULL, status TEXT NOT NULL, address_id BIGINT NOT NULL) {wr}",
    "CREATE TABLE tax_debts (tin TEXT NOT NULL, tax_type TEXT NOT NULL, amount_qepik BIGINT NOT NULL,"
    " since TEXT NOT NULL, PRIMARY KEY (tin, tax_type)) {wr}",
    "CREATE TABLE income_declarations (tin TEXT NOT NULL, year INTEGER NOT NULL, income_qepik BIGINT NOT NULL,"
    " tax_qepik BIGINT NOT NULL, declared_on TEXT NOT NULL, PRIMARY KEY (tin, year)) {wr}",
    "CREATE TABLE employers (tin TEXT PRIMARY KEY, name TEXT NOT NULL, sector TEXT NOT NULL, city TEXT NOT NULL) {wr}",
    "CREATE TABLE labor_contracts (id TEXT PRIMARY KEY, employer_tin TEXT NOT NULL, employee_pin TEXT NOT NULL,"
    " position TEXT NOT NULL, salary TEXT NOT NULL, currency TEXT NOT NULL, start_date TEXT NOT NULL,"
    " end_date TEXT, status TEXT NOT NULL, terminated_on TEXT, termination_reason TEXT) {wr}",
    "CREATE TABLE licenses (number TEXT PRIMARY KEY, holder_tin TEXT NOT NULL, activity TEXT NOT NULL,"
    " issued_on TEXT NOT NULL, expires_on TEXT NOT NULL, status TEXT NOT NULL, application_id TEXT) {wr}",
)

#: Secondary indexes, built after loading.
INDEXES: tuple[str, ...] = (
    "CREATE INDEX identity_documents_pin ON identity_documents (pin)",
    "CREATE INDEX taxpayers_pin ON taxpayers (pin)",
    "CREATE INDEX labor_contracts_employee ON labor_contracts (employee_pin)",
    "CREATE INDEX labor_contracts_employer ON labor_contracts (employer_tin)",
    "CREATE INDEX licenses_holder ON licenses (holder_tin)",
)


# Vocabulary ----------------------------------------------------------------------------------------------------

MALE_NAMES = (
    "Əli", "Məhəmməd", "Hüseyn", "Həsən", "Elçin", "Rəşad", "Orxan", "Tural", "Kamran", "Elvin", "Murad", "Anar",
    "Ramil", "Vüqar", "Fərid", "Nihad", "Cavid", "Ruslan", "Samir", "Emin", "Rauf", "İlkin", "Ilqar", "Zaur",
    "Natiq", "Rövşən", "Elnur", "Vasif", "Tofiq", "Rafiq", "Aydın", "Kənan", "Nicat", "Ülvi", "Toğrul", "Şahin",
    "Fuad", "Eldar", "Mübariz", "Yusif",
)  # fmt: skip
FEMALE_NAMES = (
    "Aysel", "Leyla", "Günel", "Nigar", "Səbinə", "Aynur", "Könül", "Nərmin", "Lalə", "Sevinc", "Türkan", "Aytən",
    "Fidan", "Gülnar", "Ülviyyə", "Zəhra", "Fatimə", "Nurlana", "Aygün", "Xədicə", "Şəbnəm", "Nərgiz", "Vüsalə",
    "Kəmalə", "Rəna", "Samirə", "Elnarə", "Günay", "Aidə", "Mehriban", "Pərvin", "Səadət", "Cəmilə", "Röya",
    "Lamiyə", "Arzu", "İlahə", "Zülfiyyə", "Mələk", "Dilarə",
)  # fmt: skip
#: Surnames in their male form; the female form adds ``a`` to ``-ov``/``-yev``/``-ev`` (Məmmədov → Məmmədova).
SURNAMES = (
    "Məmmədov", "Əliyev", "Həsənov", "Hüseynov", "Quliyev", "İsmayılov", "Abbasov", "Babayev", "Cəfərov",
    "Rəhimov", "Nəsirov", "Orucov", "Qasımov", "Süleymanov", "Mustafayev", "Kərimov", "Sadıqov", "Vəliyev",
    "Zeynalov", "Bağırov", "Əhmədov", "Rzayev", "Musayev", "İbrahimov", "Nəbiyev", "Salmanov", "Şükürov",
    "Tağıyev", "Hacıyev", "Novruzov", "Əsgərov", "Məlikov", "Xəlilov", "Aslanov", "Həsənli", "Əfəndiyev",
    "Qurbanov", "Paşayev", "Rüstəmov", "Axundov",
)  # fmt: skip
#: (city, share of the population, first postal code, number of postal codes, has districts)
CITIES = (
    ("Bakı", 0.42, 1000, 150),
    ("Sumqayıt", 0.07, 5000, 12),
    ("Gəncə", 0.07, 2000, 20),
    ("Mingəçevir", 0.03, 4500, 6),
    ("Lənkəran", 0.04, 4200, 8),
    ("Şəki", 0.04, 5500, 8),
    ("Naxçıvan", 0.04, 7000, 10),
    ("Şirvan", 0.03, 5700, 5),
    ("Quba", 0.04, 4000, 6),
    ("Xaçmaz", 0.03, 2700, 5),
    ("Şamaxı", 0.03, 5600, 5),
    ("Qəbələ", 0.03, 3600, 5),
    ("Zaqatala", 0.03, 6200, 5),
    ("Yevlax", 0.03, 6600, 5),
    ("Masallı", 0.03, 4300, 5),
)
BAKU_DISTRICTS = (
    "Nəsimi", "Yasamal", "Nərimanov", "Səbail", "Binəqədi", "Xətai", "Nizami", "Sabunçu", "Suraxanı", "Xəzər",
    "Qaradağ", "Pirallahı",
)  # fmt: skip
STREETS = (
    "Nizami küçəsi", "Füzuli küçəsi", "Azadlıq prospekti", "Heydər Əliyev prospekti", "Bülbül prospekti",
    "Səməd Vurğun küçəsi", "Rəşid Behbudov küçəsi", "Üzeyir Hacıbəyov küçəsi", "Neftçilər prospekti",
    "Atatürk prospekti", "Hüsü Hacıyev küçəsi", "Məhsəti küçəsi", "Tbilisi prospekti", "Hüseyn Cavid prospekti",
    "Mirzə Fətəli Axundov küçəsi", "Nəriman Nərimanov prospekti", "Qara Qarayev prospekti",
    "Zərifə Əliyeva küçəsi", "Xətai prospekti", "Cəfər Cabbarlı küçəsi", "İstiqlaliyyət küçəsi",
    "Mikayıl Müşfiq küçəsi", "Şəhriyar küçəsi", "Natəvan küçəsi", "Bakıxanov küçəsi", "Sabit Orucov küçəsi",
    "Əhməd Rəcəbli küçəsi", "Yusif Səfərov küçəsi", "Həsən bəy Zərdabi prospekti", "Məmməd Əmin Rəsulzadə küçəsi",
)  # fmt: skip
#: (code, name word, positions) per sector; employers' names and their contracts' positions follow the sector.
SECTORS = (
    ("construction", "Tikinti", ("mühəndis", "usta", "fəhlə", "layihə meneceri", "smeta mütəxəssisi")),
    ("trade", "Ticarət", ("satış məsləhətçisi", "kassir", "anbardar", "mağaza müdiri", "mühasib")),
    ("logistics", "Logistika", ("sürücü", "ekspeditor", "anbardar", "dispetçer", "logistika meneceri")),
    ("it", "İT", ("proqramçı", "sistem administratoru", "analitik", "testləşdirmə mühəndisi", "dizayner")),
    ("food", "Qida", ("aşpaz", "ofisiant", "texnoloq", "qablaşdırıcı", "bar meneceri")),
    ("health", "Səhiyyə", ("həkim", "tibb bacısı", "laborant", "əczaçı", "registrator")),
    ("education", "Təhsil", ("müəllim", "tərbiyəçi", "metodist", "direktor müavini", "psixoloq")),
    ("finance", "Maliyyə", ("mühasib", "kredit mütəxəssisi", "auditor", "kassir", "risk analitiki")),
    ("tourism", "Turizm", ("bələdçi", "qonaq qəbulu", "otaq xidmətçisi", "turizm meneceri", "aşpaz")),
    ("agriculture", "Aqro", ("aqronom", "traktorçu", "baytar", "fəhlə", "ferma müdiri")),
    ("energy", "Enerji", ("elektrik", "mühəndis", "operator", "təhlükəsizlik mütəxəssisi", "texnik")),
    ("services", "Xidmət", ("mühafizəçi", "təmizlikçi", "operator", "menecer", "sürücü")),
)
COMPANY_WORDS = (
    "Xəzər", "Şahdağ", "Qafqaz", "Azər", "Günəş", "Ulduz", "Araz", "Kür", "Nur", "Sahil", "Dəniz", "Odlar",
    "Yurd", "Vətən", "İnam", "Zəfər", "Ümid", "Aypara", "Çinar", "Palıd", "Mərcan", "Zümrüd", "Kəhrəba", "Yaşıl",
    "Mavi", "Qızıl", "Etibar", "Göygöl", "Naftalan", "Qoşqar", "Murov", "Savalan", "İpək Yolu", "Atəşgah",
    "Qobustan", "Abşeron", "Lənkəran", "Qarabağ", "Şuşa", "Mil",
)  # fmt: skip
LEGAL_FORMS = ("MMC", "ASC", "QSC", "PHŞ")
LEGAL_FORM_SHARE = (0.82, 0.07, 0.07, 0.04)
INDIVIDUAL_TAXES = ("income_tax", "property_tax", "land_tax")
LEGAL_TAXES = ("profit_tax", "vat", "property_tax", "social_insurance")
LICENSE_ACTIVITIES = (
    "pharmacy", "private_medical", "education", "security_services", "construction_design", "alcohol_trade",
    "tourism", "telecommunications", "passenger_transport", "audit", "fuel_trade", "veterinary", "insurance_broker",
    "tobacco_trade", "waste_management",
)  # fmt: skip

PIN_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # ascending, so the code's order is the number's order
_PIN_SPACE = len(PIN_ALPHABET) ** 7
_TIN_SPACE = 900_000_000  # nine digits from 100000000, then the kind digit
_DOC_SPACE = 100_000_000
_EPOCH = np.datetime64("1970-01-01", "D")
_REF = int((np.datetime64(REFERENCE_DATE.isoformat(), "D") - _EPOCH).astype(np.int64))
_YEAR = 365.2425


def _day(text: str) -> int:
    return int((np.datetime64(text, "D") - _EPOCH).astype(np.int64))


# Column helpers --------------------------------------------------------------------------------------------------


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent random stream per table, so changing one table's draws leaves the others as they were."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))


def _permutation(rng: np.random.Generator, n: int, space: int) -> Arr:
    """``n`` distinct numbers in ``[0, space)`` that look random: an affine bijection of ``0..n-1`` modulo ``space``."""
    while True:
        a = int(rng.integers(space // 3, space - 1))
        if np.gcd(a, space) == 1:
            break
    b = int(rng.integers(0, space))
    # a * i stays below 2**63: space < 2**36 and i < 2**26 at every scale.
    return (np.arange(n, dtype=np.int64) * a + b) % space


def _encode(values: Arr, width: int, alphabet: str, prefix: str = "") -> Arr:
    """Fixed-width codes: ``prefix`` then ``values`` written in base ``len(alphabet)`` (as a numpy ``str`` array)."""
    digits = np.frombuffer(alphabet.encode("ascii"), dtype=np.uint8)
    total = len(prefix) + width
    out = np.empty((len(values), total), dtype=np.uint8)
    if prefix:
        out[:, : len(prefix)] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    rest = values.astype(np.int64, copy=True)
    for k in range(total - 1, len(prefix) - 1, -1):
        out[:, k] = digits[rest % len(alphabet)]
        rest //= len(alphabet)
    return out.view(f"S{total}").ravel().astype(f"U{total}")


def _dates(days: Arr) -> Arr:
    """ISO dates (``YYYY-MM-DD``) of day numbers since 1970-01-01 (as a numpy object array of ``str``).

    Formatting each date is slow; the range of days is small (a century), so format that range once and index it.
    """
    if len(days) == 0:
        return np.zeros(0, dtype=object)
    low, high = int(days.min()), int(days.max())
    table = np.datetime_as_string(np.arange(low, high + 1).astype("datetime64[D]"), unit="D").astype(object)
    result: Arr = table[days - low]
    return result


def _labels(values: Arr, fmt: str) -> Arr:
    """``fmt.format(v)`` for each of ``values`` (few distinct ones), as a numpy object array."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.array([fmt.format(v) for v in distinct.tolist()], dtype=object)[inverse]


def _add_years(days: Arr, years: int | Arr) -> Arr:
    """The same calendar day ``years`` later (29 February becomes 1 March), as day numbers."""
    dates = days.astype("datetime64[D]")
    months = dates.astype("datetime64[M]")
    offset = dates - months.astype("datetime64[D]")
    shifted = (months + np.asarray(years, dtype=np.int64) * 12).astype("datetime64[D]") + offset
    result: Arr = (shifted - _EPOCH).astype(np.int64)
    return result


def _pick(rng: np.random.Generator, n: int, choices: int, p: Sequence[float] | None = None) -> Arr:
    """``n`` indexes into ``choices`` items (weighted by ``p`` if given)."""
    if p is None:
        return rng.integers(0, choices, n)
    weights = np.asarray(p, dtype=np.float64)
    return np.searchsorted(np.cumsum(weights / weights.sum()), rng.random(n), side="right").clip(0, choices - 1)


def _female_surname(name: str) -> str:
    return name + "a" if name.endswith(("ov", "ev")) else name


def _text(values: Sequence[str | None]) -> Arr:
    """Python strings (or ``None``) as a numpy object array, to index with code arrays."""
    return np.array(values, dtype=object)


def _money(values: Arr) -> Arr:
    """Amounts in AZN (floats) as integer qəpik."""
    result: Arr = np.rint(values * 100).astype(np.int64)
    return result


# Generation ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationReport:
    """What :func:`generate` made: rows per table and the wall-clock seconds it took."""

    url: str
    scale: str
    seed: int
    counts: dict[str, int]
    seconds: float


class _Tables:
    """Column arrays of every table, built one after the other from the seed (numbers first, text at the end)."""

    def __init__(self, scale: Scale, seed: int) -> None:
        self.scale = scale
        self.seed = seed
        self.columns: dict[str, list[Arr]] = {}
        self.address_city: Arr = np.zeros(0, dtype=np.int64)

    def add(self, table: str, columns: Sequence[Arr]) -> None:
        """Queue ``columns`` (equal-length arrays, in :data:`TABLES` order) for loading."""
        self.columns[table] = list(columns)

    def rows(self, table: str) -> tuple[int, Iterator[tuple[Any, ...]]]:
        """How many rows ``table`` has, and the rows (Python values; the arrays are released)."""
        lists = [column.tolist() for column in self.columns.pop(table)]
        return len(lists[0]), zip(*lists, strict=True)

    def build(self) -> None:
        """Generate every table."""
        people = self._persons()
        taxpayers = self._taxpayers(people)
        contracts = self._contracts(people, taxpayers)
        self._income(people, taxpayers, contracts)
        self._debts(taxpayers)
        self._licenses(taxpayers)

    # (1) households, persons, addresses, documents, family links
    def _persons(self) -> dict[str, Arr]:
        rng = _rng(self.seed, 1)
        n = self.scale.persons
        sizes = rng.choice(np.arange(1, 7), size=n, p=[0.18, 0.22, 0.22, 0.22, 0.12, 0.04])
        ends = np.cumsum(sizes)
        households = int(np.searchsorted(ends, n)) + 1
        sizes = sizes[:households]
        sizes[-1] -= int(ends[households - 1]) - n
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        household = np.repeat(np.arange(households), sizes)
        position = np.arange(n) - starts[household]
        size = sizes[household]
        couple = size >= 2
        head, spouse, child = position == 0, couple & (position == 1), position >= 2
        # Heads of couples are mostly the husband; children's sex is a coin toss.
        head_male = rng.random(households) < np.where(sizes >= 2, 0.8, 0.5)
        male = np.where(head, head_male[household], np.where(spouse, ~head_male[household], rng.random(n) < 0.51))
        # Birth dates: heads born 1945-2004, spouses within a few years, children 20-40 years after the mother.
        head_born = rng.integers(_day("1945-01-01"), _day("2004-12-31"), households)
        head_born = np.where(sizes >= 3, np.minimum(head_born, _day("1990-12-31")), head_born)
        spouse_born = (head_born + rng.normal(0, 4 * _YEAR, households)).astype(np.int64)
        spouse_born = np.minimum(spouse_born, _REF - 18 * 366)
        younger_parent = np.maximum(head_born, spouse_born)
        child_born = younger_parent[household] + rng.integers(int(20 * _YEAR), int(40 * _YEAR), n)
        child_born = np.minimum(child_born, _REF - rng.integers(1, int(3 * _YEAR), n))
        born = np.where(head, head_born[household], np.where(spouse, spouse_born[household], child_born))
        # Names: the family surname is the husband's; 40% of wives keep their own.
        family_surname = _pick(rng, households, len(SURNAMES))
        own_surname = _pick(rng, n, len(SURNAMES))
        keeps_own = spouse & (rng.random(n) < 0.4)
        surname_idx = np.where(keeps_own, own_surname, family_surname[household])
        first_m, first_f = _pick(rng, n, len(MALE_NAMES)), _pick(rng, n, len(FEMALE_NAMES))
        first_idx = np.where(male, first_m, len(MALE_NAMES) + first_f)
        father_first = np.where(male[starts], first_m[starts], -1)  # head's name if he is the father
        spouse_first = np.full(households, -1)
        has_spouse = sizes >= 2
        spouse_first[has_spouse] = first_m[starts[has_spouse] + 1]
        father_name = np.where(head_male, father_first, spouse_first)  # the male partner of a couple
        grandfather = _pick(rng, n, len(MALE_NAMES))
        patronymic_father = np.where(child & (father_name[household] >= 0), father_name[household], grandfather)
        patronymic_idx = patronymic_father * 2 + (~male).astype(np.int64)

        first_names = _text(MALE_NAMES + FEMALE_NAMES)
        surnames = _text([s for name in SURNAMES for s in (name, _female_surname(name))])
        patronymics = _text([f"{name} {suffix}" for name in MALE_NAMES for suffix in ("oğlu", "qızı")])

        # Addresses: one per household, then one per legal entity (taxpayers use them too).
        legal = self._legal_count()
        address_count = households + legal
        city = _pick(rng, address_count, len(CITIES), [c[1] for c in CITIES])
        baku = city == 0
        district = np.where(baku, _pick(rng, address_count, len(BAKU_DISTRICTS)), -1)
        city_names = _text([c[0] for c in CITIES])
        districts = _text([*BAKU_DISTRICTS, None])
        first_code = np.array([c[2] for c in CITIES])
        code_count = np.array([c[3] for c in CITIES])
        postal = first_code[city] + (rng.random(address_count) * code_count[city]).astype(np.int64)
        building = rng.integers(1, 160, address_count)
        apartment = np.where(
            rng.random(address_count) < np.where(baku, 0.85, 0.45), rng.integers(1, 140, address_count), 0
        )
        apartments = _text([None, *(str(i) for i in range(1, 140))])
        self.address_city = city
        self.add(
            "addresses",
            [
                np.arange(1, address_count + 1),
                city_names[city],
                districts[district],
                _text(STREETS)[_pick(rng, address_count, len(STREETS))],
                building.astype(str),
                apartments[apartment],
                _encode(postal, 4, "0123456789", "AZ"),
            ],
        )

        # PINs: a scrambled bijection, so household members' PINs are unrelated.
        pin_number = _permutation(rng, n, _PIN_SPACE)
        pins = _encode(pin_number, 7, PIN_ALPHABET)
        order = np.argsort(pin_number, kind="stable")
        genders = _text(["female", "male"])
        self.add(
            "persons",
            [
                pins[order],
                first_names[first_idx][order],
                surnames[surname_idx * 2 + (~male).astype(np.int64)][order],
                patronymics[patronymic_idx][order],
                _dates(born)[order],
                genders[male.astype(np.int64)][order],
                (household + 1)[order],
            ],
        )

        # Identity cards: everyone; issued in the last ten years (older cards have expired).  Cards issued to
        # minors run five years, to adults ten.
        age_days = _REF - born
        expired = rng.random(n) < 0.06
        back = np.where(
            expired, rng.integers(int(10.2 * _YEAR), int(13 * _YEAR), n), rng.integers(0, int(9.9 * _YEAR), n)
        )
        issued = np.maximum(_REF - back, born + 30)
        adult_at_issue = issued - born >= int(18 * _YEAR)
        card_expires = _add_years(issued, np.where(adult_at_issue, 10, 5)) - 1
        card_number = _permutation(rng, n, _DOC_SPACE)
        # Passports: a fifth of the adults; ten years.
        passport = (age_days >= int(18 * _YEAR)) & (rng.random(n) < 0.2)
        holders = np.flatnonzero(passport)
        passport_issued = np.maximum(
            _REF - rng.integers(0, int(12 * _YEAR), len(holders)), born[holders] + int(18 * _YEAR)
        )
        passport_expires = _add_years(passport_issued, 10) - 1
        passport_number = _permutation(rng, len(holders), _DOC_SPACE)
        # ID cards (AZE…) sort before passports (C…), each in number order.
        card_order = np.argsort(card_number, kind="stable")
        passport_order = np.argsort(passport_number, kind="stable")
        doc_person = np.concatenate((card_order, holders[passport_order]))
        self.add(
            "identity_documents",
            [
                np.concatenate(
                    (
                        _encode(card_number[card_order], 8, "0123456789", "AZE"),
                        _encode(passport_number[passport_order], 8, "0123456789", "C").astype("U11"),
                    )
                ),
                pins[doc_person],
                np.concatenate((np.full(n, "id_card", dtype=object), np.full(len(holders), "passport", dtype=object))),
                _dates(np.concatenate((issued[card_order], passport_issued[passport_order]))),
                _dates(np.concatenate((card_expires[card_order], passport_expires[passport_order]))),
            ],
        )

        # Family links, both directions: spouses; each child with father and mother.
        index = np.arange(n)
        wife_or_husband = np.flatnonzero(spouse)
        head_of = starts[household]
        kids = np.flatnonzero(child)
        parent_a, parent_b = head_of[kids], head_of[kids] + 1
        father = np.where(male[parent_a], parent_a, parent_b)
        mother = np.where(male[parent_a], parent_b, parent_a)
        relations = ("child", "father", "mother", "spouse")  # codes in text order, so sorting by code sorts text
        a = np.concatenate((head_of[wife_or_husband], wife_or_husband, kids, kids, father, mother))
        rel = np.concatenate(
            (
                np.full(2 * len(wife_or_husband), 3),
                np.full(len(kids), 1),
                np.full(len(kids), 2),
                np.zeros(2 * len(kids), dtype=np.int64),
            )
        )
        b = np.concatenate((wife_or_husband, head_of[wife_or_husband], father, mother, kids, kids))
        link_order = np.lexsort((pin_number[b], rel, pin_number[a]))
        self.add("family_links", [pins[a][link_order], _text(relations)[rel][link_order], pins[b][link_order]])
        del index

        spaced = np.array([" "], dtype=object)
        names = (
            surnames[surname_idx * 2 + (~male).astype(np.int64)]
            + spaced
            + first_names[first_idx]
            + spaced
            + patronymics[patronymic_idx]
        )
        return {
            "pins": pins,
            "pin_number": pin_number,
            "born": born,
            "age_days": age_days,
            "household": household,
            "names": names,
            "households": np.asarray(households),
        }

    def _legal_count(self) -> int:
        # A fifth more legal entities than employers: holding companies, public bodies, dormant firms.
        return self.scale.employers + self.scale.employers // 5

    # (2) taxpayers: adults with a TIN, legal entities; employers
    def _taxpayers(self, people: dict[str, Arr]) -> dict[str, Arr]:
        rng = _rng(self.seed, 2)
        adults = np.flatnonzero(people["age_days"] >= int(18 * _YEAR))
        individuals = adults[rng.random(len(adults)) < 0.6]
        ni, nl = len(individuals), self._legal_count()
        number = _permutation(rng, ni + nl, _TIN_SPACE) + 100_000_000
        tin_value = number * 10 + np.concatenate((np.full(ni, 2), np.full(nl, 1)))
        tins = _encode(tin_value, 10, "0123456789")
        # Individuals registered once adult; legal entities in the last 30 years.
        born = people["born"][individuals]
        adult_from = born + int(18 * _YEAR)
        registered_i = adult_from + (rng.random(ni) * (_REF - adult_from)).astype(np.int64)
        registered_l = _REF - rng.integers(30, int(30 * _YEAR), nl)
        sector = _pick(rng, nl, len(SECTORS))
        word = _pick(rng, nl, len(COMPANY_WORDS))
        form = _pick(rng, nl, len(LEGAL_FORMS), LEGAL_FORM_SHARE)
        sector_words = _text([s[1] for s in SECTORS])
        legal_names = (
            _text(COMPANY_WORDS)[word].astype(str)
            + " "
            + sector_words[sector].astype(str)
            + " "
            + _text(LEGAL_FORMS)[form].astype(str)
        )
        # Employers are active; a few other entities have been liquidated and some individuals deregistered.
        status_i = np.where(rng.random(ni) < 0.03, "inactive", "active")
        status_l = np.where((np.arange(nl) >= self.scale.employers) & (rng.random(nl) < 0.3), "liquidated", "active")
        households = int(people["households"])
        kind = np.concatenate((np.full(ni, "individual", dtype=object), np.full(nl, "legal_entity", dtype=object)))
        order = np.argsort(tin_value, kind="stable")
        self.add(
            "taxpayers",
            [
                tins[order],
                kind[order],
                np.concatenate((people["pins"][individuals].astype(object), np.full(nl, None, dtype=object)))[order],
                np.concatenate((people["names"][individuals], legal_names)).astype(object)[order],
                np.concatenate((np.full(ni, None, dtype=object), _text(LEGAL_FORMS)[form]))[order],
                _dates(np.concatenate((registered_i, registered_l)))[order],
                np.concatenate((status_i, status_l)).astype(object)[order],
                np.concatenate((people["household"][individuals] + 1, households + 1 + np.arange(nl)))[order],
            ],
        )
        employers = np.arange(self.scale.employers)
        employer_order = np.argsort(tin_value[ni + employers], kind="stable")
        city_names = _text([c[0] for c in CITIES])
        self.add(
            "employers",
            [
                tins[ni + employers][employer_order],
                legal_names[employers][employer_order],
                _text([s[0] for s in SECTORS])[sector[employers]][employer_order],
                city_names[self.address_city[households + employers]][employer_order],
            ],
        )
        return {
            "tins": tins,
            "individuals": individuals,
            "ni": np.asarray(ni),
            "nl": np.asarray(nl),
            "sector": sector,
            "active": np.concatenate((status_i == "active", status_l == "active")),
            "tin_value": tin_value,
        }

    # (3) labor contracts
    def _contracts(self, people: dict[str, Arr], tax: dict[str, Arr]) -> dict[str, Arr]:
        rng = _rng(self.seed, 3)
        c = self.scale.contracts
        age = people["age_days"]
        working = np.flatnonzero((age >= int(18 * _YEAR)) & (age < int(66 * _YEAR)))
        employee = working[_pick(rng, c, len(working))]
        # Employer sizes are skewed: a few large employers, many small ones.
        employer = (self.scale.employers * rng.random(c) ** 2.5).astype(np.int64)
        born = people["born"][employee]
        earliest = np.maximum(born + int(18 * _YEAR), _day("2005-01-01"))
        start = earliest + (rng.random(c) * (_REF - earliest)).astype(np.int64)
        # A person's contracts in time order: each but the latest was terminated by the time the next started.
        order = np.lexsort((start, employee))
        employee, employer, start = employee[order], employer[order], start[order]
        latest = np.ones(c, dtype=bool)
        latest[:-1] = employee[:-1] != employee[1:]
        next_start = np.roll(start, -1)
        # A third are fixed-term (one to three years); the rest open-ended.
        fixed = rng.random(c) < 0.3
        end = _add_years(start, rng.integers(1, 4, c)) - 1
        # Terminated: every earlier contract; a tenth of the latest ones; fixed-term ones whose term has passed.
        quit_latest = rng.random(c) < 0.1
        terminated = ~latest | quit_latest | (fixed & (end < _REF))
        left_on = np.where(
            latest,
            start + ((_REF - start) * rng.random(c)).astype(np.int64),
            np.maximum(next_start - rng.integers(1, 45, c), start),
        )
        term_over = fixed & (end <= left_on) & (end < _REF)
        terminated_on = np.where(term_over, end, left_on)
        reason = np.where(term_over, 0, 1 + _pick(rng, c, len(TERMINATION_REASONS) - 1, (0.5, 0.3, 0.1, 0.1)))
        sector = tax["sector"][employer]
        positions = _text([p for s in SECTORS for p in s[2]])
        position = sector * 5 + _pick(rng, c, 5)
        salary = np.maximum(400, np.round(rng.lognormal(np.log(850.0), 0.55, c), -1)).astype(np.int64)
        ni = int(tax["ni"])
        end_text = _dates(end).astype(object)
        end_text[~fixed] = None
        terminated_text = _dates(terminated_on).astype(object)
        terminated_text[~terminated] = None
        reason_text = _text(TERMINATION_REASONS)[reason]
        reason_text[~terminated] = None
        number = _permutation(rng, c, 16**12)
        by_id = np.argsort(number, kind="stable")
        self.add(
            "labor_contracts",
            [
                _encode(number[by_id], 12, "0123456789ABCDEF", "LC-"),
                tax["tins"][ni + employer][by_id],
                people["pins"][employee][by_id],
                positions[position][by_id],
                _labels(salary, "{}.00")[by_id],
                np.full(c, "AZN", dtype=object),
                _dates(start)[by_id],
                end_text[by_id],
                _text(("active", "terminated"))[terminated.astype(np.int64)][by_id],
                terminated_text[by_id],
                reason_text[by_id],
            ],
        )
        current = np.full(self.scale.persons, 0, dtype=np.int64)
        in_force = ~terminated
        current[employee[in_force]] = salary[in_force] * 100
        return {"salary": current}

    # (4) income declarations
    def _income(self, people: dict[str, Arr], tax: dict[str, Arr], contracts: dict[str, Arr]) -> None:
        rng = _rng(self.seed, 4)
        ni, nl = int(tax["ni"]), int(tax["nl"])
        tins = tax["tins"]
        salary = contracts["salary"][tax["individuals"]] / 100.0
        # Employees declare about a year of salary; others some self-employment income.  Companies: turnover.
        base_i = np.where(salary > 0, salary * 12, rng.lognormal(np.log(9000.0), 0.9, ni))
        base_l = rng.lognormal(np.log(400_000.0), 1.4, nl)
        base = np.concatenate((base_i, base_l))
        rate = np.concatenate((np.full(ni, 0.14), np.full(nl, 0.02)))
        rows_tin: list[Arr] = []
        rows_year: list[Arr] = []
        rows_income: list[Arr] = []
        rows_declared: list[Arr] = []
        for year in INCOME_YEARS:
            declared = tax["active"] & (rng.random(ni + nl) < 0.85)
            who = np.flatnonzero(declared)
            growth = rng.normal(1.0 + 0.05 * (year - INCOME_YEARS[0]), 0.08, len(who))
            rows_tin.append(who)
            rows_year.append(np.full(len(who), year))
            rows_income.append(np.round(base[who] * np.maximum(growth, 0.2), 2))
            deadline = _day(f"{year + 1}-03-31")
            rows_declared.append(deadline - rng.integers(0, 85, len(who)))
        who = np.concatenate(rows_tin)
        income = _money(np.concatenate(rows_income))
        tax_due = np.rint(income * rate[who]).astype(np.int64)
        years = np.concatenate(rows_year)
        order = np.lexsort((years, tax["tin_value"][who]))
        self.add(
            "income_declarations",
            [
                tins[who][order],
                years[order],
                income[order],
                tax_due[order],
                _dates(np.concatenate(rows_declared))[order],
            ],
        )
        del people

    # (5) tax debts
    def _debts(self, tax: dict[str, Arr]) -> None:
        rng = _rng(self.seed, 5)
        ni, nl = int(tax["ni"]), int(tax["nl"])
        debtor = np.flatnonzero(tax["active"] & (rng.random(ni + nl) < 0.08))
        legal = debtor >= ni
        # One or two tax types each, distinct.
        types_i, types_l = len(INDIVIDUAL_TAXES), len(LEGAL_TAXES)
        first = np.where(legal, _pick(rng, len(debtor), types_l), _pick(rng, len(debtor), types_i))
        second = np.where(
            legal,
            (first + 1 + _pick(rng, len(debtor), types_l - 1)) % types_l,
            (first + 1 + _pick(rng, len(debtor), types_i - 1)) % types_i,
        )
        two = rng.random(len(debtor)) < 0.3
        who = np.concatenate((debtor, debtor[two]))
        code = np.concatenate((first, second[two]))
        names = _text(INDIVIDUAL_TAXES + LEGAL_TAXES)
        tax_type = names[np.where(who >= ni, types_i + code, code)]
        amount = _money(np.round(rng.lognormal(np.log(np.where(who >= ni, 6000.0, 350.0)), 1.0), 2))
        since = _REF - rng.integers(20, int(4 * _YEAR), len(who))
        tins = tax["tins"][who]
        order = np.lexsort((tax_type.astype(str), tax["tin_value"][who]))
        self.add("tax_debts", [tins[order], tax_type[order], amount[order], _dates(since)[order]])

    # (6) licenses
    def _licenses(self, tax: dict[str, Arr]) -> None:
        rng = _rng(self.seed, 6)
        count = self.scale.licenses
        ni, nl = int(tax["ni"]), int(tax["nl"])
        # Four in five licenses go to legal entities, the rest to individual entrepreneurs.
        to_legal = rng.random(count) < 0.8
        holder = np.where(to_legal, ni + _pick(rng, count, nl), _pick(rng, count, ni))
        issued = _REF - rng.integers(1, int(8 * _YEAR), count)
        expires = _add_years(issued, LICENSE_YEARS) - 1
        roll = rng.random(count)
        status = np.where(roll < 0.05, 1, np.where(roll < 0.09, 2, 0))
        status = np.where(expires < _REF, 3, status)
        year = issued.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
        # LIC-YYYY-XXXXXXXX: eight hex digits, scrambled so that numbers cannot be enumerated.
        serial = _permutation(rng, count, 16**8)
        number = year * 16**8 + serial
        by_number = np.argsort(number, kind="stable")
        numbers = np.char.add(np.char.add("LIC-", year.astype(str)), _encode(serial, 8, "0123456789ABCDEF", "-"))
        self.add(
            "licenses",
            [
                numbers[by_number],
                tax["tins"][holder][by_number],
                _text(LICENSE_ACTIVITIES)[_pick(rng, count, len(LICENSE_ACTIVITIES))][by_number],
                _dates(issued)[by_number],
                _dates(expires)[by_number],
                _text(("active", "suspended", "revoked", "expired"))[status][by_number],
                np.full(count, None, dtype=object),
            ],
        )


def generate(url: str, *, scale: str = "small", seed: int = 2026, base: Path | None = None) -> GenerationReport:
    """Create the registries database at ``url`` from scratch (replacing a previous one) and fill it.

    A SQLite file is deleted first (and again if the load fails: it is written without a journal); on PostgreSQL
    the tables are dropped and recreated in the same transaction as the load, so a failure leaves the previous data
    in place, and tables other than the registries' own (``license_applications``) are left alone there.
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r} (use {', '.join(SCALES)})")
    started = time.perf_counter()
    db = RegistryDb(url, base=base)
    if db.path is not None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{db.path}{suffix}").unlink(missing_ok=True)
    tables = _Tables(SCALES[scale], seed)
    tables.build()
    meta = {
        "generator_version": GENERATOR_VERSION,
        "reference_date": REFERENCE_DATE.isoformat(),
        "scale": scale,
        "seed": str(seed),
    }
    counts: dict[str, int] = {}
    try:
        with db.loader() as load:
            _create(load)
            load.insert("registry_meta", TABLES["registry_meta"], sorted(meta.items()))
            counts["registry_meta"] = len(meta)
            for table in list(tables.columns):
                count, rows = tables.rows(table)
                load.insert(table, TABLES[table], rows)
                counts[table] = count
            for statement in INDEXES:
                load.execute(statement)
    except BaseException:
        # SQLite loads without a journal, so a failed load cannot be rolled back: remove the half-written file.
        if db.path is not None:
            db.path.unlink(missing_ok=True)
        raise
    return GenerationReport(url, scale, seed, counts, time.perf_counter() - started)


def _create(load: Loader) -> None:
    without_rowid = "WITHOUT ROWID" if load.dialect == "sqlite" else ""
    if load.dialect == "postgresql":
        for table in reversed(TABLES):
            load.execute(f"DROP TABLE IF EXISTS {table}")
    for statement in SCHEMA:
        load.execute(statement.replace("{wr}", without_rowid).rstrip())


def digest(url: str, *, base: Path | None = None) -> dict[str, str]:
    """SHA-256 of every table's rows in key order (rows as JSON arrays, one per line): equal data, equal digests."""
    reader = RegistryDb(url, base=base).reader()
    try:
        result = {}
        for table, columns in TABLES.items():
            sha = hashlib.sha256()
            collate = ' COLLATE "C"' if reader.dialect == "postgresql" else ""
            keys = ", ".join(f"{c}{collate}" if c not in ("id", "year") else c for c in columns[: _key_width(table)])
            for row in reader.query(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {keys}"):  # noqa: S608
                sha.update(json.dumps(row, ensure_ascii=False).encode())
                sha.update(b"\n")
            result[table] = sha.hexdigest()
        return result
    finally:
        reader.close()


def _key_width(table: str) -> int:
    return {"family_links": 3, "tax_debts": 2, "income_declarations": 2}.get(table, 1)
