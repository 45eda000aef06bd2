"""Deterministic generator of a sample HR feed (CSV) for demos and tests.

    python -m streams.samples.generate_hr --count 300 --seed 7 --out streams/samples/hr.csv

The same (count, seed) always gives the same rows. The org chart is a tree: one CEO (empty manager_id),
department heads reporting to the CEO, everyone else reporting to someone in their department. Rows are
sorted by employee_id, which is assigned at random, so a manager often appears after their reports.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import random
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = (
    "employee_id",
    "first_name",
    "last_name",
    "preferred_name",
    "email",
    "department",
    "title",
    "manager_id",
    "location",
    "status",
    "hire_date",
    "uid",
)

DEPARTMENTS = (
    "Engineering",
    "Finance",
    "Sales",
    "Marketing",
    "Human Resources",
    "Legal",
    "Operations",
    "Support",
    "Research",
    "Facilities",
)
_DEPARTMENT_WEIGHTS = (26, 7, 16, 8, 5, 3, 8, 14, 9, 4)

_TITLES = {
    "Engineering": ("Software Engineer", "Site Reliability Engineer", "QA Engineer", "Data Engineer"),
    "Finance": ("Accountant", "Financial Analyst", "Payroll Specialist", "Controller"),
    "Sales": ("Account Executive", "Sales Representative", "Sales Engineer", "Account Manager"),
    "Marketing": ("Marketing Specialist", "Content Strategist", "Product Marketing Manager", "Designer"),
    "Human Resources": ("HR Generalist", "Recruiter", "HR Business Partner", "Benefits Specialist"),
    "Legal": ("Counsel", "Paralegal", "Compliance Officer", "Contracts Specialist"),
    "Operations": (
        "Operations Analyst",
        "Project Manager",
        "Procurement Specialist",
        "Logistics Coordinator",
    ),
    "Support": ("Support Engineer", "Customer Success Manager", "Support Specialist", "Technical Writer"),
    "Research": ("Research Scientist", "Research Engineer", "Data Scientist", "Lab Technician"),
    "Facilities": ("Facilities Coordinator", "Office Manager", "Maintenance Technician", "Security Officer"),
}

_FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "Michael", "Jennifer", "William", "Elizabeth", "David", "Susan",
    "Richard", "Margaret", "Thomas", "Katherine", "Daniel", "Sarah", "Alexander", "Emily", "Jonathan",
    "Laura",
    "Christopher", "Olivia", "Matthew", "Sophie", "Andrew", "Hannah", "Samuel", "Grace", "Benjamin", "Chloé",
    "José", "Zoë", "Łukasz", "Søren", "Björn", "Anaïs", "François", "Małgorzata", "Jürgen", "Siobhán",
    "Ángel", "Inés", "Ægir", "Dóra", "Nikolaj", "Priya", "Arjun", "Wei", "Mei", "Hiroshi",
    "Yuki", "Ahmed", "Fatima", "Omar", "Amara", "Kwame", "Ivan", "Olga", "Mateo", "Lucía",
    "Noah", "Ava", "Liam", "Isabella", "Ethan", "Mia", "Lucas", "Elena", "Gabriel", "Nora",
)  # fmt: skip

_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Taylor", "Anderson",
    "Thomas", "Moore", "Martin", "Jackson", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker",
    "Müller", "Schröder", "García", "Núñez", "Kowalski", "Wiśniewski", "Jørgensen", "Ødegård", "Håkansson",
    "Lefèvre", "Dubois", "Nguyễn", "Öztürk", "Dvořák", "Łukaszewicz", "Gößmann", "Fernández", "Çelik",
    "O'Brien", "O'Connor", "D'Angelo", "Smith-Jones", "Taylor-Brooks", "Garcia-Lopez", "MacDonald",
    "Patel", "Sharma", "Chen", "Wang", "Kim", "Tanaka", "Sato", "Hassan", "Okafor", "Mensah",
    "Ivanov", "Petrova", "Rossi", "Bianchi", "Silva", "Santos", "Jansen", "de Vries", "Novak", "Horváth",
)  # fmt: skip

_NICKNAMES = {
    "James": "Jim", "Robert": "Bob", "Patricia": "Pat", "Michael": "Mike", "Jennifer": "Jen",
    "William": "Bill", "Elizabeth": "Liz", "David": "Dave", "Susan": "Sue", "Richard": "Rick",
    "Margaret": "Maggie", "Thomas": "Tom", "Katherine": "Kate", "Daniel": "Dan", "Alexander": "Alex",
    "Jonathan": "Jon", "Christopher": "Chris", "Matthew": "Matt", "Andrew": "Andy", "Samuel": "Sam",
    "Benjamin": "Ben", "Małgorzata": "Gosia", "Gabriel": "Gabe", "Isabella": "Bella",
}  # fmt: skip

_LOCATIONS = ("London", "New York", "Berlin", "Paris", "Warsaw", "Copenhagen", "Madrid", "Toronto")
_LOCATION_WEIGHTS = (22, 18, 12, 8, 8, 6, 6, 8)
_REMOTE_SHARE = 0.08

#: Letters NFKD does not decompose into ASCII.
_FOLD = str.maketrans(
    {"Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "ß": "ss", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe",
     "Đ": "D", "đ": "d", "Þ": "Th", "þ": "th", "\u0131": "i"}
)  # fmt: skip

_EMAIL_DOMAIN = "example.org"
_UID_MAX = 20
_HIRED_FROM = dt.date(2005, 1, 1)
_HIRED_TO = dt.date(2024, 12, 31)
_MAX_DEPTH = 4  # CEO = 0, heads = 1, ..., individual contributors at most at this depth


def ascii_fold(text: str) -> str:
    """Lowercase ASCII: 'Łukasz O'Brien' -> 'lukasz obrien' (apostrophes dropped)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD))
    return decomposed.encode("ascii", "ignore").decode("ascii").replace("'", "").lower()


@dataclass
class _Person:
    index: int
    first_name: str
    last_name: str
    department: str
    depth: int
    manager: int | None
    reports: list[int] = field(default_factory=list)


def _unique(base: str, taken: set[str], max_len: int | None = None) -> str:
    """``base``, or ``base`` + the smallest number >= 2 that makes it unique (cut to ``max_len``)."""
    candidate = base[:max_len] if max_len else base
    n = 2
    while candidate in taken:
        suffix = str(n)
        candidate = (base[: max_len - len(suffix)] if max_len else base) + suffix
        n += 1
    taken.add(candidate)
    return candidate


def _org_chart(rng: random.Random, count: int) -> list[_Person]:
    people: list[_Person] = []

    def hire(department: str, depth: int, manager: int | None) -> _Person:
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        person = _Person(len(people), first, last, department, depth, manager)
        people.append(person)
        if manager is not None:
            people[manager].reports.append(person.index)
        return person

    hire("Operations", 0, None)  # the CEO
    departments = DEPARTMENTS[: max(0, min(len(DEPARTMENTS), count - 1))]
    members: dict[str, list[int]] = {d: [hire(d, 1, 0).index] for d in departments}
    weights = _DEPARTMENT_WEIGHTS[: len(departments)]
    while len(people) < count:
        department = rng.choices(departments, weights)[0]
        # Someone above the deepest level, most often an existing manager (teams of ~5, not a flat list).
        candidates = [i for i in members[department] if people[i].depth < _MAX_DEPTH]
        managers = [i for i in candidates if people[i].reports]
        manager = rng.choice(managers if managers and rng.random() < 0.8 else candidates)
        members[department].append(hire(department, people[manager].depth + 1, manager).index)
    return people


def _title(rng: random.Random, person: _Person) -> str:
    if person.manager is None:
        return "Chief Executive Officer"
    if person.depth == 1:
        return f"Director of {person.department}"
    if person.reports:
        return rng.choice(("Manager", "Team Lead", "Senior Manager")) + f", {person.department}"
    title = rng.choice(_TITLES[person.department])
    return f"Senior {title}" if rng.random() < 0.25 else title


def generate(count: int, seed: int) -> list[dict[str, str]]:
    """``count`` employee rows (columns ``COLUMNS``), sorted by employee_id; deterministic for a seed."""
    if count < 1:
        return []
    rng = random.Random(seed)
    people = _org_chart(rng, count)
    numbers = list(range(1, count + 1))
    rng.shuffle(numbers)
    ids = [f"E{n:05d}" for n in numbers]

    # ~3% terminated and ~2% on leave, only among people without reports (the org chart stays sound).
    leaves = [p.index for p in people if not p.reports and p.manager is not None]
    away = rng.sample(leaves, min(len(leaves), round(count * 0.05)))
    terminated = set(away[: round(count * 0.03)])
    on_leave = set(away[round(count * 0.03) :])

    emails: set[str] = set()
    uids: set[str] = set()
    rows: list[dict[str, str]] = []
    span = (_HIRED_TO - _HIRED_FROM).days
    for person in people:
        first, last = ascii_fold(person.first_name), ascii_fold(person.last_name)
        local = f"{first.replace(' ', '')}.{last.replace(' ', '')}"
        login = "".join(c for c in first[:1] + last if c.isalnum())
        nickname = _NICKNAMES.get(person.first_name)
        preferred = nickname if nickname and rng.random() < 0.6 else ""
        location = "Remote" if rng.random() < _REMOTE_SHARE else rng.choices(_LOCATIONS, _LOCATION_WEIGHTS)[0]
        status = "active"
        if person.index in terminated:
            status = "terminated"
        elif person.index in on_leave:
            status = "leave"
        rows.append(
            {
                "employee_id": ids[person.index],
                "first_name": person.first_name,
                "last_name": person.last_name,
                "preferred_name": preferred,
                "email": _unique(local, emails) + f"@{_EMAIL_DOMAIN}",
                "department": person.department,
                "title": _title(rng, person),
                "manager_id": "" if person.manager is None else ids[person.manager],
                "location": location,
                "status": status,
                "hire_date": (_HIRED_FROM + dt.timedelta(days=rng.randrange(span + 1))).isoformat(),
                "uid": _unique(login, uids, _UID_MAX),
            }
        )
    rows.sort(key=lambda r: r["employee_id"])
    return rows


def write_csv(rows: list[dict[str, str]], path: Path | str) -> None:
    """Writes ``rows`` as UTF-8 CSV with a header row and ``\\n`` line endings."""
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=300, help="number of employees (default 300)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("hr.csv"), help="output file")
    args = parser.parse_args(argv)
    write_csv(generate(args.count, args.seed), args.out)
    print(f"wrote {args.count} rows to {args.out}")


if __name__ == "__main__":
    main()
