"""An OSV advisory database read from disk, and the matching of a version against an advisory.

The database is what OSV publishes per ecosystem: ``PyPI/all.zip`` holds one ``<ID>.json`` per
advisory (PYSEC, GHSA, ...), in the OSV schema (https://ossf.github.io/osv-schema/). Operators
copy it to the machine and refresh it; it may stay a zip file or be unpacked into a directory
(read recursively). Nothing here opens a network connection: the scanner must work on a
machine without internet, and an advisory feed fetched at run time would be a supply-chain
risk of its own.

Reading is forgiving per advisory and strict per database: a file that is not JSON, not an
advisory or too large is listed in ``DatabaseRead.unreadable`` and the rest is read; a path
that does not exist or is not a readable zip or directory raises ``DatabaseError``.

Matching follows the OSV schema's evaluation: a version is affected when it is listed in an
``affected[].versions`` list, or when, walking an ``ECOSYSTEM`` (or ``SEMVER``) range's events
in version order, the last event at or below it is an ``introduced`` (a ``fixed`` at or below
it, or a ``last_affected`` below it, ends the affected stretch). Versions compare as PEP 440
versions (``packaging``), names as PEP 503 normalised names. ``GIT`` ranges name commits, not
releases, and are skipped.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ECOSYSTEM = "PyPI"
# Larger than any real advisory by two orders of magnitude; a bigger entry is a damaged or
# hostile file, listed as unreadable instead of being loaded into memory.
MAX_ADVISORY_BYTES = 8 * 1024 * 1024
MATCHED_RANGE_TYPES = frozenset({"ECOSYSTEM", "SEMVER"})
FUTURE_TOLERANCE = timedelta(days=1)


class DatabaseError(Exception):
    """The database cannot be read at all (missing, not a zip or directory, unreadable); the
    message says which and what to do."""


class Severity(StrEnum):
    """An advisory's severity, as GitHub's advisory database names them; ``unknown`` when the
    advisory gives none that can be read (never guessed)."""

    low = "low"
    moderate = "moderate"
    high = "high"
    critical = "critical"
    unknown = "unknown"

    @property
    def rank(self) -> int:
        """Order for comparisons; ``unknown`` ranks below ``low`` (it never reaches a
        ``fail_on`` threshold)."""
        return _RANKS[self]


_RANKS = {
    Severity.unknown: 0,
    Severity.low: 1,
    Severity.moderate: 2,
    Severity.high: 3,
    Severity.critical: 4,
}
# database_specific.severity as GitHub (GHSA) and other sources write it.
_NAMED = {
    "low": Severity.low,
    "moderate": Severity.moderate,
    "medium": Severity.moderate,
    "high": Severity.high,
    "critical": Severity.critical,
}
# The CVSS qualitative ratings (v2 has no "Critical"; "None" is a score of 0.0).
_CVSS_RATINGS = {
    "none": Severity.low,
    "low": Severity.low,
    "medium": Severity.moderate,
    "high": Severity.high,
    "critical": Severity.critical,
}


def cvss_severity(kind: str, vector: str) -> Severity:
    """The qualitative rating of a CVSS v2, v3 or v4 vector (the ``cvss`` library computes
    the base score); ``unknown`` for other types or an unreadable vector."""
    import cvss  # type: ignore[import-untyped]  # no type information published

    classes = {"CVSS_V2": cvss.CVSS2, "CVSS_V3": cvss.CVSS3, "CVSS_V4": cvss.CVSS4}
    maker = classes.get(kind)
    if maker is None:
        return Severity.unknown
    try:
        scored = maker(vector)
        rating = scored.severity if kind == "CVSS_V4" else scored.severities()[0]
    except (cvss.CVSSError, ValueError, KeyError, IndexError):
        return Severity.unknown
    return _CVSS_RATINGS.get(str(rating).lower(), Severity.unknown)


def advisory_severity(document: dict[str, Any]) -> Severity:
    """``database_specific.severity`` when the advisory names one (a reviewed rating), else
    the highest rating of its CVSS vectors (top level and per affected package), else
    ``unknown``."""
    specific = document.get("database_specific")
    if isinstance(specific, dict) and isinstance(specific.get("severity"), str):
        named = _NAMED.get(specific["severity"].strip().lower())
        if named is not None:
            return named
    entries: list[Any] = list(_list(document.get("severity")))
    for affected in _list(document.get("affected")):
        if isinstance(affected, dict):
            entries.extend(_list(affected.get("severity")))
    ratings = [
        cvss_severity(str(entry.get("type")), str(entry.get("score")))
        for entry in entries
        if isinstance(entry, dict)
    ]
    return max(ratings, key=lambda s: s.rank, default=Severity.unknown)


@dataclass(frozen=True)
class Match:
    """An installed version inside an advisory's affected versions, and the first version
    that fixes it (``None`` when the advisory names none above it)."""

    fixed: str | None


@dataclass(frozen=True)
class Affected:
    """One ``affected`` entry of an advisory for a PyPI package: its ranges' events and its
    explicit version list."""

    name: str  # PEP 503 normalised
    ranges: tuple[tuple[dict[str, str], ...], ...]
    versions: frozenset[str]

    def match(self, installed: str) -> Match | None:
        """Whether ``installed`` is affected, with the fix above it."""
        version = _version(installed)
        listed = installed in self.versions or (
            version is not None and any(_version(v) == version for v in self.versions)
        )
        fixes: list[Version] = []
        hit = listed
        if version is not None:
            for events in self.ranges:
                affected, fixed = _in_range(version, events)
                if affected:
                    hit = True
                    if fixed is not None:
                        fixes.append(fixed)
        if not hit:
            return None
        return Match(str(min(fixes)) if fixes else None)


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _in_range(version: Version, events: Iterable[dict[str, str]]) -> tuple[bool, Version | None]:
    """OSV's range evaluation: affected when the last event at or below ``version`` is an
    ``introduced``; the fix is the first ``fixed`` above it. Events whose version does not
    parse are skipped (they cannot be ordered)."""
    ordered: list[tuple[Version, str]] = []
    for event in events:
        for kind in ("introduced", "fixed", "last_affected"):
            if kind in event:
                at = _version(str(event[kind]))
                if at is not None:
                    ordered.append((at, kind))
    ordered.sort(key=lambda item: item[0])
    affected = False
    for at, kind in ordered:
        if kind == "introduced" and version >= at:
            affected = True
        elif (kind == "fixed" and version >= at) or (kind == "last_affected" and version > at):
            affected = False
    if not affected:
        return False, None
    fixed = min((at for at, kind in ordered if kind == "fixed" and at > version), default=None)
    return True, fixed


@dataclass(frozen=True)
class Advisory:
    """What the scanner needs of one OSV advisory."""

    id: str
    aliases: tuple[str, ...]
    summary: str
    severity: Severity
    affected: tuple[Affected, ...]

    def matches(self, canonical_name: str, installed: str) -> Match | None:
        """Whether ``installed`` of the package is affected by any of this advisory's entries
        for it; the fix is the lowest among the entries that hold it."""
        found = [a.match(installed) for a in self.affected if a.name == canonical_name]
        hits = [m for m in found if m is not None]
        if not hits:
            return None
        fixes = [Version(m.fixed) for m in hits if m.fixed is not None]
        return Match(str(min(fixes)) if fixes else None)


def printable(text: str) -> str:
    """``text`` with every character that is not printable (a terminal's escape sequences, line
    breaks) replaced by ``?``: what the database says reaches an operator's terminal and logs."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _modified(document: dict[str, Any]) -> datetime | None:
    value = document.get("modified")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _affected(document: dict[str, Any]) -> tuple[Affected, ...]:
    entries = []
    for entry in _list(document.get("affected")):
        package = entry.get("package") if isinstance(entry, dict) else None
        if not isinstance(package, dict) or package.get("ecosystem") != ECOSYSTEM:
            continue
        name = package.get("name")
        if not isinstance(name, str) or not name:
            continue
        ranges = tuple(
            tuple(e for e in _list(r.get("events")) if isinstance(e, dict))
            for r in _list(entry.get("ranges"))
            if isinstance(r, dict) and r.get("type") in MATCHED_RANGE_TYPES
        )
        versions = frozenset(str(v) for v in _list(entry.get("versions")))
        entries.append(Affected(canonicalize_name(name), ranges, versions))
    return tuple(entries)


def _concerns(document: Any, names: set[str]) -> bool:
    """Whether ``document`` (an OSV advisory, else ``ValueError``) names one of ``names``."""
    if not isinstance(document, dict) or not isinstance(document.get("id"), str):
        raise ValueError("not an OSV advisory (no `id`)")
    return any(affected.name in names for affected in _affected(document))


def parse_advisory(document: Any) -> Advisory | None:
    """The advisory in an OSV document; ``None`` when it is withdrawn. Raises ``ValueError``
    when the document is not an OSV advisory."""
    if not isinstance(document, dict) or not isinstance(document.get("id"), str):
        raise ValueError("not an OSV advisory (no `id`)")
    if document.get("withdrawn"):
        return None
    aliases = tuple(printable(str(a)) for a in _list(document.get("aliases")))
    summary = document.get("summary") or document.get("details") or ""
    first_line = str(summary).strip().splitlines()[0] if str(summary).strip() else ""
    return Advisory(
        id=printable(document["id"]),
        aliases=aliases,
        summary=printable(first_line[:200]),
        severity=advisory_severity(document),
        affected=_affected(document),
    )


@dataclass
class DatabaseRead:
    """One pass over the database: the advisories of the packages asked for, how many were
    read in all, the newest ``modified`` time among them (how current the export is), and the
    entries that could not be read."""

    path: Path
    advisories: list[Advisory] = field(default_factory=list)
    read: int = 0
    withdrawn: int = 0
    newest_modified: datetime | None = None
    unreadable: list[str] = field(default_factory=list)


def _read_file(file: Path) -> bytes | str:
    """A regular file's content, at most ``MAX_ADVISORY_BYTES``, or why it is not read: a
    symbolic link, a device or a pipe is never opened (each could hang or fill the memory)."""
    try:
        descriptor = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or "unreadable"
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return "not a regular file"
        content = handle.read(MAX_ADVISORY_BYTES + 1)
    if len(content) > MAX_ADVISORY_BYTES:
        return f"larger than {MAX_ADVISORY_BYTES} bytes"
    return content


def _documents(path: Path) -> Iterator[tuple[str, bytes | str]]:
    """Each JSON entry's name and content (bytes), or the reason it cannot be read (str)."""
    if path.is_dir():
        for file in sorted(path.rglob("*.json")):
            yield str(file.relative_to(path)), _read_file(file)
        return
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir() or not info.filename.endswith(".json"):
                continue
            if info.file_size > MAX_ADVISORY_BYTES:
                yield info.filename, f"larger than {MAX_ADVISORY_BYTES} bytes"
                continue
            try:
                yield info.filename, archive.read(info)
            except Exception as exc:  # damaged, encrypted, an unknown compression: one entry
                yield info.filename, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_database(path: Path, names: set[str]) -> DatabaseRead:
    """Read the database at ``path`` (zip or directory), keeping the advisories that concern
    one of ``names`` (PEP 503 normalised). Raises ``DatabaseError`` when it cannot be read."""
    if not path.exists():
        raise DatabaseError(
            f"the advisory database {path} does not exist: copy the OSV export (PyPI/all.zip) "
            "there, or set RENUM_SECURITY__SCANNER__DATABASE"
        )
    if not os.access(path, os.R_OK):
        raise DatabaseError(
            f"the advisory database {path} cannot be read by this process (permissions)"
        )
    if not path.is_dir() and not zipfile.is_zipfile(path):
        raise DatabaseError(
            f"the advisory database {path} is neither a directory nor a zip file: it should be "
            "the OSV export PyPI/all.zip, or the directory it was unpacked into"
        )
    result = DatabaseRead(path)
    # A modification time past this is a damaged or forged entry: it must not make an old
    # database look current (the clocks of OSV's exporters are not ahead by a day).
    latest_credible = datetime.now(UTC) + FUTURE_TOLERANCE
    try:
        for name, content in _documents(path):
            name = printable(name)
            if isinstance(content, str):
                result.unreadable.append(f"{name}: {printable(content)}")
                continue
            try:
                document = json.loads(content)
                # Only the advisories of installed packages are parsed whole (severity
                # scoring is the costly part, and a full export holds tens of thousands).
                relevant = _concerns(document, names)
                advisory = parse_advisory(document) if relevant else None
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                result.unreadable.append(f"{name}: {printable(reason)}")
                continue
            result.read += 1
            modified = _modified(document)
            if modified is not None and modified > latest_credible:
                result.unreadable.append(f"{name}: modified in the future ({modified.isoformat()})")
            elif modified is not None and (
                result.newest_modified is None or modified > result.newest_modified
            ):
                result.newest_modified = modified
            if document.get("withdrawn"):
                result.withdrawn += 1
            elif advisory is not None:
                result.advisories.append(advisory)
    except Exception as exc:  # the archive itself (its directory, the file under it)
        raise DatabaseError(f"the advisory database {path} cannot be read: {exc}") from exc
    return result
