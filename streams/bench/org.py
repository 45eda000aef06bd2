"""A synthetic organisation, generated deterministically from a seed, and its change records.

N people across three systems, as a mid-size company has them:

- ``hr`` (an HR file): every person — employee id, names, mail, uid, department, title, location, manager
  (a tree: everyone but the CEO reports to someone earlier), status (2% terminated);
- ``dir`` (the LDAP directory, an export target): an existing account for 20% of the people, joined by
  employeeNumber, with a stale title, so the first sync both joins and updates;
- ``appdb`` (a PostgreSQL application database): an account for 50% of the people, joined by mail,
  contributing an application role; and groups: one per department plus ``all-staff`` with up to 50,000
  members (value-level membership is measured separately once references flow).

Delta mixes follow the issue: per delta round 1% adds, 1% deletes (terminations that leave HR) and 5% modifies
(title, department or surname changes, a surname change renaming the LDAP entry).
Everything is a pure function of (seed, N): the same arguments give the same records, byte for byte.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


def _words(text: str) -> list[str]:
    return text.split()


FIRST = _words(
    "Ada Alan Barbara Claude Dennis Edsger Frances Grace Hedy Ivan Jean John Ken Leslie Margaret Niklaus "
    "Ole Peter Radia Rosalind Shafi Sophie Tim Tony Ursula Vint Whitfield Xiao Yukihiro Zhores"
)
LAST = _words(
    "Lovelace Turing Liskov Shannon Ritchie Dijkstra Allen Hopper Lamarr Sutherland Sammet Backus Thompson "
    "Lamport Hamilton Wirth Dahl Naur Perlman Picard Goldwasser Wilson Berners-Lee Hoare LeGuin Cerf Diffie "
    "Yao Matsumoto Alferov Müller O'Brien García Nguyen"
)
TITLES = ("Engineer", "Senior Engineer", "Analyst", "Manager", "Director", "Accountant", "Designer", "Clerk")
LOCATIONS = ("Berlin", "Lisbon", "Toronto", "Osaka", "Nairobi", "Austin")
NS = uuid.UUID("6f1c2a52-8d0e-4c35-9d8e-0b7f1e2a9c11")


@dataclass(frozen=True, slots=True)
class Person:
    index: int
    employee_id: str
    first_name: str
    last_name: str
    department: str
    title: str
    location: str
    manager: str | None
    status: str

    @property
    def uid(self) -> str:
        return f"u{self.index:07d}"

    @property
    def email(self) -> str:
        return f"{self.uid}@example.org"

    def hr_row(self) -> dict[str, list[str]]:
        row = {
            "employee_id": [self.employee_id],
            "first_name": [self.first_name],
            "last_name": [self.last_name],
            "email": [self.email],
            "uid": [self.uid],
            "department": [self.department],
            "title": [self.title],
            "location": [self.location],
            "status": [self.status],
        }
        if self.manager:
            row["manager_id"] = [self.manager]
        return row


@dataclass
class Org:
    """The generated organisation: people, which of them have directory and app accounts, and groups."""

    seed: int
    size: int
    people: list[Person]
    dir_accounts: list[int]
    app_accounts: list[int]
    groups: dict[str, list[int]] = field(default_factory=dict)
    #: How many members all-staff has at most.
    big_group: int = 50_000

    @property
    def departments(self) -> list[str]:
        return sorted({p.department for p in self.people})

    def dir_entry(self, i: int) -> tuple[str, str, dict[str, list[str]]]:
        """(anchor, dn, attributes) of person i's directory account, as the LDAP connector reads it."""
        p = self.people[i]
        anchor = str(uuid.uuid5(NS, f"dir:{p.employee_id}"))
        cn = f"{p.first_name} {p.last_name} ({p.uid})"
        dn = f"cn={cn},ou=people,dc=example,dc=org"
        attrs = {
            "objectClass": ["inetOrgPerson"],
            "cn": [cn],
            "sn": [p.last_name],
            "givenName": [p.first_name],
            "uid": [p.uid],
            "mail": [p.email],
            "employeeNumber": [p.employee_id],
            "title": ["(unknown)"],  # stale: the first sync updates it
        }
        return anchor, dn, attrs

    def app_row(self, i: int) -> tuple[str, dict[str, list[str]]]:
        p = self.people[i]
        anchor = f"acct-{i:07d}"
        return anchor, {
            "account_id": [anchor],
            "login": [p.uid],
            "email": [p.email.upper() if i % 7 == 0 else p.email],  # join normalises case
            "role": ["admin" if i % 50 == 0 else "user"],
        }

    def regroup(self) -> dict[str, list[int]]:
        """Recompute the groups from the people as they are now; returns the groups that changed."""
        groups = _groups(self.people, self.big_group)
        changed = {n: m for n, m in groups.items() if self.groups.get(n) != m}
        for name in set(self.groups) - set(groups):
            changed[name] = []
        self.groups = groups
        return changed

    def delta(self, round_no: int) -> list[tuple[str, Person | None, Person | None]]:
        """One delta round: (op, before, after) for 1% adds, 1% deletes and 5% modifies of HR."""
        rng = random.Random(f"{self.seed}:delta:{round_no}")
        n = len(self.people)
        changes: list[tuple[str, Person | None, Person | None]] = []
        touched: set[int] = set()
        # Once per round: it scans every person (inside the loops, the 1M round never ended).
        departments = self.departments
        for _ in range(max(1, n // 20)):
            i = rng.randrange(n)
            if i in touched:
                continue
            touched.add(i)
            p = self.people[i]
            what = rng.random()
            if what < 0.4:
                new = _replace(p, title=rng.choice(TITLES))
            elif what < 0.8:
                new = _replace(p, department=rng.choice(departments))
            else:
                new = _replace(p, last_name=rng.choice(LAST))  # renames the LDAP entry
            if new != p:
                changes.append(("u", p, new))
                self.people[i] = new
        for _ in range(max(1, n // 100)):
            i = rng.randrange(n)
            if i in touched or self.people[i].status == "left":
                continue
            touched.add(i)
            p = self.people[i]
            changes.append(("d", p, None))
            self.people[i] = _replace(p, status="left")
        for _ in range(max(1, n // 100)):
            idx = len(self.people)
            p = _person(rng, idx, self.people, len(departments))
            self.people.append(p)
            changes.append(("c", None, p))
        return changes


def _replace(p: Person, **kw: Any) -> Person:
    fields = {f: getattr(p, f) for f in Person.__slots__}
    fields.update(kw)
    return Person(**fields)


def _person(rng: random.Random, i: int, earlier: list[Person], departments: int) -> Person:
    manager = earlier[rng.randrange(max(1, i // 8))].employee_id if i else None
    return Person(
        index=i,
        employee_id=f"E{i:07d}",
        first_name=rng.choice(FIRST),
        last_name=rng.choice(LAST),
        department=f"D{rng.randrange(departments):04d}",
        title=rng.choice(TITLES),
        location=rng.choice(LOCATIONS),
        manager=manager,
        status="terminated" if rng.random() < 0.02 else "active",
    )


def generate(size: int, seed: int = 7, big_group: int = 50_000) -> Org:
    """The organisation of ``size`` people for ``seed`` (deterministic)."""
    rng = random.Random(f"{seed}:org:{size}")
    departments = max(1, size // 500)
    people: list[Person] = []
    for i in range(size):
        people.append(_person(rng, i, people, departments))
    dir_accounts = [i for i in range(size) if rng.random() < 0.2]
    app_accounts = [i for i in range(size) if rng.random() < 0.5]
    return Org(seed, size, people, dir_accounts, app_accounts, _groups(people, big_group), big_group)


def _groups(people: list[Person], big_group: int) -> dict[str, list[int]]:
    """One group per department, and all-staff: the first ``big_group`` people; those who left are in
    none."""
    groups: dict[str, list[int]] = {}
    for p in people:
        if p.status != "left":
            groups.setdefault(f"dept-{p.department}", []).append(p.index)
    groups["all-staff"] = [p.index for p in people[:big_group] if p.status != "left"]
    return groups


def iter_hr(org: Org) -> Iterator[tuple[str, dict[str, list[str]]]]:
    for p in org.people:
        yield p.employee_id, p.hr_row()
