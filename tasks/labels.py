"""Reviewer labels in a real database (SQLAlchemy): append-only, the latest label wins.

Keyed by (sha256, model_version): the same part inspected again by another model version is a
new verdict to review. Nothing is ever updated or deleted, so the history (who, when, what, why)
survives restarts and a second reviewer. Two reviewers at once: a label names the latest label
id its reviewer saw (`seen`); if someone else labelled the part since, the write is refused with
a Conflict that says who and what, instead of silently overwriting.

SQLite file by default (the output folder's `review.sqlite`), PostgreSQL by URL
(postgresql+psycopg://...).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from sqlalchemy import DateTime, Integer, String, Text, create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

LABELS = {
    "defect": "defect confirmed",
    "good": "good part",
    "missed": "missed defect",
    "unsure": "unsure",
}
MAX_NOTE = 2000


class LabelError(ValueError):
    """A label the store refuses (unknown value, note too long, no reviewer)."""


class Conflict(Exception):
    """Someone labelled the part after the reviewer loaded it."""

    def __init__(self, latest: "LabelRecord") -> None:
        super().__init__(
            f"{latest.reviewer} labelled this part '{latest.label}' at {latest.created_at:%Y-%m-%d %H:%M:%S} UTC "
            "after you opened it; reload to see it, then label again if you disagree"
        )
        self.latest = latest


class Base(DeclarativeBase):
    pass


class Label(Base):
    __tablename__ = "review_labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(80), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class LabelRecord:
    id: int
    sha256: str
    model_version: str
    label: str
    note: str
    reviewer: str
    created_at: datetime

    @classmethod
    def of(cls, row: Label) -> "LabelRecord":
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=timezone.utc)
        return cls(row.id, row.sha256, row.model_version, row.label, row.note, row.reviewer, created)

    def to_dict(self) -> dict:
        return {**self.__dict__, "created_at": self.created_at.isoformat(timespec="seconds")}


def engine_for(url: str) -> Engine:
    """An engine. SQLite: WAL, a busy timeout (a second writer waits instead of failing) and
    BEGIN IMMEDIATE, so a transaction holds the write lock from its first read: the conflict
    check and the insert cannot interleave with another writer's."""
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def check_label(label: str, reviewer: str, note: str) -> None:
    """Raise LabelError for a label no part can get (unknown value, no reviewer, note too long)."""
    if label not in LABELS:
        raise LabelError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    if not reviewer.strip():
        raise LabelError("a label needs a reviewer name")
    if len(note) > MAX_NOTE:
        raise LabelError(f"note is {len(note)} characters; at most {MAX_NOTE}")


class LabelStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        Base.metadata.create_all(self.engine)

    def add(
        self, sha256: str, model_version: str, label: str, reviewer: str, note: str = "", seen: int | None = None
    ) -> LabelRecord:
        """Append a label. `seen`: id of the latest label the reviewer saw (None: none); a newer
        one by now raises Conflict. The check and the insert are one transaction."""
        out = self.add_many([(sha256, model_version, seen)], label, reviewer, note)[(sha256, model_version)]
        if isinstance(out, Conflict):
            raise out
        return out

    def add_many(
        self, items: Iterable[tuple[str, str, int | None]], label: str, reviewer: str, note: str = ""
    ) -> dict[tuple[str, str], LabelRecord | Conflict]:
        """One label for many parts, items (sha256, model_version, seen): one row per part (a part
        given twice counts once, its first `seen`), each checked against `seen` like `add`; a
        conflict refuses that part only. One transaction, so 500 parts cost one commit."""
        check_label(label, reviewer, note)
        wanted: dict[tuple[str, str], int | None] = {}
        for sha256, model_version, seen in items:
            wanted.setdefault((sha256, model_version), seen)
        out: dict[tuple[str, str], LabelRecord | Conflict] = {}
        if not wanted:
            return out
        now = datetime.now(timezone.utc)
        with Session(self.engine) as s, s.begin():
            for sha256, model_version in sorted(wanted):  # one lock order: two bulk writers cannot deadlock
                if self.engine.dialect.name == "postgresql":  # also serialises the first label of a part
                    s.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"{sha256}/{model_version}"))))
                latest = s.scalars(
                    select(Label)
                    .where(Label.sha256 == sha256, Label.model_version == model_version)
                    .order_by(Label.id.desc())
                    .limit(1)
                ).first()
                if latest is not None and latest.id != wanted[(sha256, model_version)]:
                    out[(sha256, model_version)] = Conflict(LabelRecord.of(latest))
                    continue
                row = Label(
                    sha256=sha256,
                    model_version=model_version,
                    label=label,
                    note=note,
                    reviewer=reviewer.strip(),
                    created_at=now,
                )
                s.add(row)
                s.flush()
                out[(sha256, model_version)] = LabelRecord.of(row)
        return out

    def history(self, sha256: str) -> list[LabelRecord]:
        """Every label of a part (all model versions), oldest first."""
        with Session(self.engine) as s:
            return [
                LabelRecord.of(r) for r in s.scalars(select(Label).where(Label.sha256 == sha256).order_by(Label.id))
            ]

    def latest(self, keys: Iterable[tuple[str, str]] | None = None) -> dict[tuple[str, str], LabelRecord]:
        """(sha256, model_version) -> the latest label, for the given keys or all."""
        with Session(self.engine) as s:
            newest = select(func.max(Label.id)).group_by(Label.sha256, Label.model_version)
            rows = s.scalars(select(Label).where(Label.id.in_(newest))).all()
        out = {(r.sha256, r.model_version): LabelRecord.of(r) for r in rows}
        if keys is not None:
            wanted = set(keys)
            out = {k: v for k, v in out.items() if k in wanted}
        return out
