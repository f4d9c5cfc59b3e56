"""A labelled synthetic note set and character-level scoring of free-text de-identification.

Real notes cannot be used to measure the scrubber, so notes are generated from templates (discharge
summaries, progress notes, radiology reports, referral letters) with every PHI string's character span
recorded, plus clinical content that must survive. Deterministic from a seed. Names include common words
(Rose Green, Will Hope, Faith Price), lowercase forms, many date formats (with and without a year), phone
styles, SSNs, MRN/HAR/member numbers, device serials, street addresses, ZIP codes and ages over 89.

``python -m cohortsync.deid.evalset [--notes N] [--seed S] [--workers W]`` prints the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import string
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cohortsync.deid.recognizers import DenyTerm

# PHI kinds in the gold spans, and the category each is scored under.
CATEGORY: dict[str, str] = {
    "patient_name": "NAME",
    "clinician_name": "NAME",
    "relative_name": "NAME",
    "other_name": "NAME",
    "date": "DATE",
    "mrn": "IDENTIFIER",
    "account": "IDENTIFIER",
    "member_id": "IDENTIFIER",
    "serial": "IDENTIFIER",
    "ssn": "IDENTIFIER",
    "phone": "IDENTIFIER",
    "fax": "IDENTIFIER",
    "email": "IDENTIFIER",
    "address": "LOCATION",
    "zip": "LOCATION",
    "city": "LOCATION",
    "facility": "LOCATION",
    "age": "AGE",
}
# Detected entity types (cohortsync's and Presidio's defaults) to categories, for per-type precision.
DETECTED_CATEGORY: dict[str, str] = {
    "PERSON": "NAME",
    "DATE": "DATE",
    "DATE_TIME": "DATE",
    "AGE": "AGE",
    "ADDRESS": "LOCATION",
    "ZIP": "LOCATION",
    "LOCATION": "LOCATION",
    "FACILITY": "LOCATION",
    "KNOWN_PHI": "LOCATION",
    "NRP": "OTHER",
    "ORGANIZATION": "LOCATION",
}
for _e in ("MRN", "ACCOUNT", "SERIAL", "LICENSE", "ID", "SSN", "PHONE", "EMAIL", "URL", "IP_ADDRESS", "CREDIT_CARD",
           "PHONE_NUMBER", "US_SSN", "EMAIL_ADDRESS", "US_DRIVER_LICENSE", "US_BANK_NUMBER", "US_PASSPORT",
           "US_ITIN", "MEDICAL_LICENSE", "UK_NHS", "IBAN_CODE", "CRYPTO", "MAC_ADDRESS", "UUID"):  # fmt: skip
    DETECTED_CATEGORY[_e] = "IDENTIFIER"


@dataclass(frozen=True)
class Span:
    """A labelled character range of a note."""

    start: int
    end: int
    kind: str


@dataclass(frozen=True)
class Note:
    """One synthetic note: its text, PHI spans, clinical spans that must survive, and its dates."""

    note_type: str
    text: str
    phi: tuple[Span, ...]
    keep: tuple[Span, ...]
    #: (start, end, date, strftime-like format) of every date in the note, for shift checks.
    dates: tuple[tuple[int, int, dt.date, str], ...] = ()


@dataclass(frozen=True)
class EvalSet:
    """Notes plus what a deployment would know from the collaborator's provider/care_site/location tables."""

    notes: tuple[Note, ...]
    known_phi: tuple[DenyTerm, ...]


# ---------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------

FIRST = """
James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan Joseph
Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony Betty Donald Sandra Steven Ashley Paul
Kimberly Andrew Emily Joshua Donna Kenneth Michelle Kevin Carol Brian Amanda George Melissa Timothy Deborah
Rose Grace Faith Hope Will Bill Mark April Dawn Sandy Hunter Chase Wade Summer Joy Ivy Amber Penny Jack
Frank Ray Destiny Crystal Rusty Lucky Autumn Major Precious Sunny Guadalupe Mei Priya Oluwaseun Thanh
""".split()  # noqa: SIM905
LAST = """
Smith Johnson Williams Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson Anderson
Thomas Taylor Moore Jackson Martin Lee Perez Thompson Harris Sanchez Clark Ramirez Lewis Robinson Walker
Green Brown White Young King Hill Wood Rivers Banks Price Case Page Bell Rice Lane Hall Fox Stone Cook Baker
Hunt Long Black Moody Strong Sweet Little Bush Street Church Frost Snow Winter Nguyen Patel Kowalski O'Brien
Okafor Chen Haddad McAllister Van Buren Goldberg
""".split()  # noqa: SIM905
STREETS = """Oak Maple Cedar Pine Elm Washington Lake Hill Park Main Church Mill River Sunset Highland Jefferson
Lincoln Franklin Chestnut Walnut Spring Forest Meadow Willow""".split()  # noqa: SIM905
STREET_SUFFIX = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Drive", "Dr", "Lane", "Ln", "Blvd", "Court", "Way"]
CITIES = [
    ("Springfield", "IL"),
    ("Riverton", "WY"),
    ("Fairview", "OR"),
    ("Greenville", "SC"),
    ("Madison", "WI"),
    ("Clinton", "IA"),
    ("Franklin", "TN"),
    ("Georgetown", "TX"),
    ("Salem", "MA"),
    ("Bristol", "CT"),
    ("Arlington", "VA"),
    ("Ashland", "KY"),
    ("Dover", "DE"),
    ("Oxford", "MS"),
    ("Milton", "PA"),
]
FACILITIES = [
    "Mercy General Hospital", "St. Brendan Medical Center", "Lakeside Community Hospital", "Northfield Clinic",
    "Valley View Health Center", "Harborview Family Practice", "Cedar Ridge Rehabilitation Center",
]  # fmt: skip
MEDS = [
    "metoprolol 25 mg PO BID",
    "lisinopril 10 mg daily",
    "metformin 500 mg BID",
    "atorvastatin 40 mg QHS",
    "aspirin 81 mg daily",
    "furosemide 20 mg PO daily",
    "apixaban 5 mg BID",
    "insulin glargine 20 units QHS",
    "amoxicillin 875 mg BID x 7 days",
    "prednisone 40 mg daily x 5 days",
    "albuterol 2 puffs q4h PRN",
]
DX = [
    ("type 2 diabetes mellitus", "E11.9"),
    ("essential hypertension", "I10"),
    ("CHF", "I50.9"),
    ("COPD with exacerbation", "J44.1"),
    ("community-acquired pneumonia", "J18.9"),
    ("CKD stage 3", "N18.30"),
    ("atrial fibrillation", "I48.91"),
    ("hyperlipidemia", "E78.5"),
    ("UTI", "N39.0"),
    ("NSTEMI", "I21.4"),
]
COMPLAINTS = [
    "chest pain",
    "shortness of breath",
    "productive cough",
    "dysuria",
    "lower extremity edema",
    "palpitations",
    "fatigue",
    "dizziness",
    "abdominal pain",
]
STUDIES = [
    ("CT chest", "no PE; small bilateral effusions."),
    ("CXR", "RLL consolidation."),
    ("MRI brain", "no acute infarct."),
    ("Echo", "EF 35-40%, mild MR."),
    ("US abdomen", "cholelithiasis."),
]
#: (format name, strftime format); "-" flags drop zero padding (glibc).
DATE_FORMATS: tuple[tuple[str, str], ...] = (
    ("iso", "%Y-%m-%d"), ("mdy", "%m/%d/%Y"), ("mdy_short", "%-m/%-d/%y"), ("long", "%B %-d, %Y"),
    ("dmony", "%d-%b-%Y"), ("mon_d", "%b %-d"), ("md", "%m/%d"), ("d_month", "%-d %B"), ("month_d", "%B %-d"),
    ("mon_d_y", "%b %-d, %Y"), ("d_mon_y", "%-d %b %Y"), ("dmony_up", "%d-%b-%y"),
)  # fmt: skip
NO_YEAR = {"mon_d", "md", "d_month", "month_d"}

# Templates. {slot} is filled by _Builder; date slots are {date:<format name>|any|noyear}.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "discharge_summary": (
        """DISCHARGE SUMMARY
{facility}
Patient: {pname_lf}    MRN: {mrn}    HAR: {har}
DOB: {dob:mdy}    Age: {age_any}    Sex: {sex}
Admission Date: {date:iso}    Discharge Date: {date:iso}
Attending: {doc}, MD    PCP: Dr. {doc2}

HISTORY OF PRESENT ILLNESS:
{pname} is a {age_phrase} {sexword} with a history of {dx1} ({dx1code}) who presented on {date:long} with \
{complaint}. Vitals: BP {bp}, HR {hr}, Temp {temp} C, SpO2 {spo2}% on room air.

HOSPITAL COURSE:
Labs: WBC {wbc}, Hgb {hgb} g/dL, Plt {plt}, Cr {cr} mg/dL, K {k}. {study} on {date:mdy_short}: {impression} \
{pronoun} was treated with {med1} and improved. {other} from social work met with the family. Pain {pain}/10 \
at discharge.

DISCHARGE MEDICATIONS:
1. {med1}
2. {med2}

FOLLOW-UP:
Follow up with Dr. {doc_last} on {date:mon_d} at {facility}, {faddr}. Call {phone} with questions; records \
may be faxed to {fax}.
Patient contact: {phone}, {email}. Home address: {addr}.

Electronically signed by {doc}, MD on {date:dmony}
""",
        """{facility} - Inpatient Discharge Summary
Name: {pname}   DOB: {dob:mdy_short}   MRN {mrn}   Account #: {acct}
SSN: {ssn}   Phone: {phone}
Admitted {date:dmony}, discharged {date:mdy}.

{title} {plast} was admitted for {complaint} in the setting of {dx1}. Initial BP {bp}, HR {hr}. Labs: WBC \
{wbc}, Hgb {hgb} g/dL, Na {na}, K {k}, Cr {cr}. {study} obtained; impression: {impression} {pronoun} was \
started on {med1}. Prior records from {date:mdy} were reviewed. ICD-10: {dx1code}, {dx2code}. His \
{relation} {rel} was at the bedside and agrees with the plan. Strength {strength}/5 in all extremities.

Discharge medications: {med1}; {med2}.
Follow-up: {doc2}, MD in 2 weeks ({date:md}); labs (CBC, BMP) on {date:iso}.
Home: {addr}. Email on file: {email}.
Dictated by: Dr. {doc_last} / transcribed {date:any}
""",
    ),
    "progress_note": (
        """PROGRESS NOTE
Date of service: {date:mdy}
Patient: {pname} (MRN {mrn})   DOB {dob:iso}
Provider: {doc}, MD, {facility}

S: {pfirst} returns for follow-up of {dx1}. Reports {complaint} over the past week. Last seen {date:mdy_short}. \
Taking {med1} as prescribed. Accompanied by {relation} {rel}. Transport home was arranged by \
{other}.
O: BP {bp}, HR {hr}, Temp {temp} C, Wt {wt} kg, SpO2 {spo2}%. Lungs clear. 2/6 systolic murmur.
Labs: A1c {a1c}% (drawn {date:month_d}), WBC {wbc}, Hgb {hgb} g/dL, Cr {cr} mg/dL.
A/P:
1. {dx1} ({dx1code}) - continue {med1}.
2. {dx2} ({dx2code}) - take 1/2 tab of {med2} if dizzy.
Return visit on {date:md}. Patient may be reached at {phone}. {age_phrase} {sexword}.

{doc}, MD
""",
        """pt: {pname_lower}   mrn: {mrn}   member id: {member}
seen today with dr. {doc_last_lower} for {dx1}. pt is {age_phrase} and lives at {addr}.
bp {bp}, hr {hr}, pain {pain}/10. hgb {hgb}. continue {med1}. next appt {date:d_month}.
ssn on file {ssn}. cell {phone}. e-mail {email}.
signed by {doc_lower}, md {date:mdy}
""",
    ),
    "radiology_report": (
        """RADIOLOGY REPORT - {facility}
Patient: {pname_lf}   MRN: {mrn}   Exam date: {date:dmony_up}
Ordering: Dr. {doc}   Reading radiologist: {doc2}, MD
Device: pacemaker, serial number {serial}; MRI-conditional.

EXAM: {study}
HISTORY: {age_phrase} {sexword} with {complaint}. Comparison: {date:long}.
FINDINGS: {impression} No pneumothorax. Heart size normal. Dose: DLP 412 mGy-cm.
IMPRESSION: {impression}
Findings discussed with Dr. {doc_last} by phone at {phone} on {date:mon_d_y}.
Read by {doc2}, MD on {date:mdy}.
""",
        """{study} ({facility})
Name: {pname}   DOB: {dob:d_mon_y}   Acct: {acct}   S/N: {serial}
Clinical indication: {dx1} ({dx1code}). Patient age {age_phrase}.
Technique: standard protocol, 5 mg IV contrast premedication not required.
Findings: {impression} Prior study dated {date:mdy} reviewed.
Electronically signed: {doc}, MD {date:iso}
""",
    ),
    "referral_letter": (
        """{facility}
{faddr}
Phone {phone}  Fax {fax}

{date:long}

Dear Dr. {doc_last},

Re: {pname}, DOB {dob:mdy}, MRN {mrn}

Thank you for seeing {title} {plast}, a {age_phrase} {sexword} with {dx1} ({dx1code}) and {dx2} ({dx2code}), \
for evaluation of {complaint}. BP today {bp}, HR {hr}, Hgb {hgb}, A1c {a1c}%. Current medications include \
{med1} and {med2}. {pronoun} lives at {addr} with {relation} {rel} ({phone}). Insurance member ID {member}. \
Symptoms began around {date:month_d}.

Please contact me at {email} or {phone}.

Sincerely,
{doc}, MD
""",
        """Referral to {doc2}, MD
From: {doc}, MD at {facility}
Date: {date:mdy}
Patient: {pname} ({pname_lf})   SSN {ssn}   HAR {har}
Reason: {dx1} ({dx1code}); {complaint} since {date:mon_d}. Vitals BP {bp}, SpO2 {spo2}%.
The patient's {relation}, {rel}, can be reached at {phone}. Address: {addr}.
Regards,
{doc}
""",
    ),
}
RELATIONS = ["wife", "husband", "daughter", "son", "sister", "brother", "mother", "friend"]


class _Builder:
    """Renders one template, recording PHI and keep spans as it goes."""

    def __init__(self, rng: random.Random, system: _System) -> None:
        self.rng = rng
        self.sys = system
        self.parts: list[str] = []
        self.pos = 0
        self.phi: list[Span] = []
        self.keep: list[Span] = []
        self.dates: list[tuple[int, int, dt.date, str]] = []
        r = rng
        self.female = r.random() < 0.5
        self.pfirst = r.choice(FIRST)
        self.plast = r.choice(LAST)
        self.doc = r.choice(system.clinicians)
        self.doc2 = r.choice([c for c in system.clinicians if c != self.doc])
        self.facility, self.faddr = r.choice(system.facilities)
        self.rel = r.choice(FIRST)
        self.relation = r.choice(RELATIONS)
        self.dx1, self.dx2 = r.sample(DX, 2)
        self.med1, self.med2 = r.sample(MEDS, 2)
        self.study = r.choice(STUDIES)
        self.base = dt.date(2015, 1, 1) + dt.timedelta(days=r.randrange(365 * 9))
        self.dob = dt.date(1925, 1, 1) + dt.timedelta(days=r.randrange(365 * 80))
        self.old = r.random() < 0.45
        self.age = r.randint(90, 104) if self.old else r.randint(25, 88)
        self.street = f"{r.randint(2, 9899)} {r.choice(STREETS)} {r.choice(STREET_SUFFIX)}"
        self.city, self.state = r.choice(CITIES)
        self.zip = f"{r.randint(10000, 99950):05d}"

    def lit(self, text: str, keep: bool = False) -> None:
        if keep:
            self.keep.append(Span(self.pos, self.pos + len(text), "clinical"))
        self.parts.append(text)
        self.pos += len(text)

    def phi_(self, text: str, kind: str) -> None:
        self.phi.append(Span(self.pos, self.pos + len(text), kind))
        self.lit(text)

    def date(self, fmt_name: str) -> None:
        r = self.rng
        if fmt_name == "any":
            fmt_name = r.choice([f for f, _ in DATE_FORMATS])
        elif fmt_name == "noyear":
            fmt_name = r.choice(sorted(NO_YEAR))
        fmt = dict(DATE_FORMATS)[fmt_name]
        d = self.base + dt.timedelta(days=r.randint(-400, 60))
        text = d.strftime(fmt)
        if fmt_name == "dmony_up":
            text = text.upper()
        self.dates.append((self.pos, self.pos + len(text), d, fmt_name))
        self.phi_(text, "date")

    def name(self, first: str, last: str, kind: str, style: str) -> None:
        if style == "lf":
            self.phi_(last, kind)
            self.lit(", ")
            self.phi_(first, kind)
        else:
            text = f"{first} {last}" if style == "full" else first if style == "first" else last
            if style == "lower":
                text = f"{first} {last}".lower()
            self.phi_(text, kind)

    def phone(self, kind: str) -> None:
        a, b, c = self.rng.randint(201, 989), self.rng.randint(200, 999), self.rng.randint(0, 9999)
        style = self.rng.randrange(6)
        text = [f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 ({a}) {b}-{c:04d}",
                f"1-{a}-{b}-{c:04d}", f"+1 {a} {b} {c:04d}"][style]  # fmt: skip
        self.phi_(text, kind)

    def address(self) -> None:
        style = self.rng.randrange(3)
        if style == 0:
            self.phi_(f"{self.street}, {self.city}, {self.state} {self.zip}", "address")
        elif style == 1:
            self.phi_(self.street, "address")
            self.lit(", ")
            self.phi_(self.city, "city")
            self.lit(f", {self.state} ")
            self.phi_(self.zip, "zip")
        else:
            self.phi_(f"{self.street}, Apt {self.rng.randint(1, 40)}", "address")
            self.lit(" in ")
            self.phi_(self.city, "city")
            self.lit(f", {self.state}, zip code ")
            self.phi_(self.zip, "zip")

    def slot(self, name: str, spec: str) -> None:
        r = self.rng
        he = not self.female
        literal: dict[str, str] = {
            "sex": "M" if he else "F",
            "sexword": "man" if he else "woman",
            "pronoun": "He" if he else "She",
            "title": "Mr." if he else "Ms.",
            "relation": self.relation,
            "dx1": self.dx1[0],
            "dx2": self.dx2[0],
            "complaint": r.choice(COMPLAINTS),
            "study": self.study[0],
            "impression": self.study[1],
        }
        keep_vals: dict[str, Callable[[], str]] = {
            "bp": lambda: f"{r.randint(100, 165)}/{r.randint(55, 99)}",
            "hr": lambda: str(r.randint(52, 118)),
            "temp": lambda: f"{r.uniform(36.1, 38.9):.1f}",
            "spo2": lambda: str(r.randint(88, 100)),
            "wbc": lambda: f"{r.uniform(3.5, 18):.1f}",
            "hgb": lambda: f"{r.uniform(7.5, 16.5):.1f}",
            "plt": lambda: str(r.randint(90, 450)),
            "cr": lambda: f"{r.uniform(0.6, 3.2):.1f}",
            "k": lambda: f"{r.uniform(3.1, 5.6):.1f}",
            "na": lambda: str(r.randint(128, 146)),
            "a1c": lambda: f"{r.uniform(5.4, 11.5):.1f}",
            "wt": lambda: f"{r.uniform(45, 140):.1f}",
            "pain": lambda: str(r.randint(0, 10)),
            "strength": lambda: str(r.randint(3, 5)),
            "dx1code": lambda: self.dx1[1],
            "dx2code": lambda: self.dx2[1],
            "med1": lambda: self.med1,
            "med2": lambda: self.med2,
        }
        doc_first, doc_last = self.doc
        if name in literal:
            self.lit(literal[name])
        elif name in keep_vals:
            self.lit(keep_vals[name](), keep=True)
        elif name == "date":
            self.date(spec or "any")
        elif name == "dob":
            text = self.dob.strftime(dict(DATE_FORMATS)[spec])
            self.dates.append((self.pos, self.pos + len(text), self.dob, spec))
            self.phi_(text, "date")
        elif name == "pname":
            self.name(self.pfirst, self.plast, "patient_name", "full")
        elif name == "pname_lf":
            self.name(self.pfirst, self.plast, "patient_name", "lf")
        elif name == "pname_lower":
            self.name(self.pfirst, self.plast, "patient_name", "lower")
        elif name == "pfirst":
            self.name(self.pfirst, self.plast, "patient_name", "first")
        elif name == "plast":
            self.name(self.pfirst, self.plast, "patient_name", "last")
        elif name == "doc":
            self.name(doc_first, doc_last, "clinician_name", "full")
        elif name == "doc_lower":
            self.name(doc_first, doc_last, "clinician_name", "lower")
        elif name == "doc_last":
            self.name(doc_first, doc_last, "clinician_name", "last")
        elif name == "doc_last_lower":
            self.phi_(doc_last.lower(), "clinician_name")
        elif name == "doc2":
            self.name(*self.doc2, "clinician_name", "full")
        elif name == "rel":
            self.phi_(self.rel, "relative_name")
        elif name == "other":
            self.name(r.choice(FIRST), r.choice(LAST), "other_name", "full")
        elif name == "facility":
            self.phi_(self.facility, "facility")
        elif name == "faddr":
            self.phi_(self.faddr, "address")
        elif name == "addr":
            self.address()
        elif name == "phone":
            self.phone("phone")
        elif name == "fax":
            self.phone("fax")
        elif name == "email":
            user = r.choice([f"{self.pfirst}.{self.plast}", f"{self.pfirst[0]}{self.plast}{r.randint(1, 99)}"])
            dom = r.choice(["example.com", "mail.example.org", "inbox.example.net"])
            user = user.lower().replace(" ", "").replace("'", "")
            self.phi_(f"{user}@{dom}", "email")
        elif name == "mrn":
            fmt = r.randrange(3)
            v = r.randint(1_000_000, 99_999_999)
            self.phi_([str(v), f"{v // 10000:04d}-{v % 10000:04d}", f"A{v}"][fmt], "mrn")
        elif name in ("har", "acct"):
            self.phi_(str(r.randint(10_000_000, 9_999_999_999)), "account")
        elif name == "member":
            self.phi_("".join(r.choices(string.ascii_uppercase, k=3)) + str(r.randint(100000000, 999999999)),
                      "member_id")  # fmt: skip
        elif name == "serial":
            self.phi_(f"{r.choice(['PJN', 'SN', 'RVX', 'A'])}{r.randint(100000, 9999999)}", "serial")
        elif name == "ssn":
            self.phi_(f"{r.randint(100, 899):03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}", "ssn")
        elif name == "age_any":
            if self.old:
                self.phi_(str(self.age), "age")
            else:
                self.lit(str(self.age))
        elif name == "age_phrase":
            style = r.choice(["{}-year-old", "{} y/o", "{} yo", "{} years old"])
            head, _, tail = style.partition("{}")
            self.lit(head)
            if self.old:
                self.phi_(str(self.age), "age")
            else:
                self.lit(str(self.age))
            self.lit(tail)
        else:
            raise KeyError(name)

    def render(self, template: str) -> None:
        for text, field_name, spec, _ in string.Formatter().parse(template):
            if text:
                self.lit(text)
            if field_name:
                self.slot(field_name, spec or "")


@dataclass(frozen=True)
class _System:
    clinicians: list[tuple[str, str]]
    facilities: list[tuple[str, str]]


def make_evalset(n_notes: int = 320, seed: int = 20240611) -> EvalSet:
    """Deterministic from ``seed``: the same notes, spans and known-PHI list every time."""
    rng = random.Random(seed)
    clinicians = [(rng.choice(FIRST), rng.choice(LAST)) for _ in range(24)]
    facilities = []
    for f in FACILITIES:
        city, st = rng.choice(CITIES)
        addr = f"{rng.randint(10, 9800)} {rng.choice(STREETS)} {rng.choice(STREET_SUFFIX)}, {city}, {st} " \
               f"{rng.randint(10000, 99950):05d}"  # fmt: skip
        facilities.append((f, addr))
    system = _System(clinicians, facilities)
    kinds = sorted(TEMPLATES)
    notes: list[Note] = []
    for i in range(n_notes):
        kind = kinds[i % len(kinds)]
        b = _Builder(rng, system)
        b.render(rng.choice(TEMPLATES[kind]))
        notes.append(Note(kind, "".join(b.parts), tuple(b.phi), tuple(b.keep), tuple(b.dates)))
    known = [DenyTerm(f"{fi} {la}", "PERSON") for fi, la in clinicians]
    known += [DenyTerm(f, "FACILITY") for f, _ in facilities] + [DenyTerm(a, "ADDRESS") for _, a in facilities]
    return EvalSet(tuple(notes), tuple(known))


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------

Detections = Sequence[tuple[int, int, str]] | None


class Detector(Protocol):
    """Anything with ``detect(texts) -> spans per text`` (a TextScrubber)."""

    def detect(self, texts: Sequence[str]) -> Sequence[Detections]: ...


@dataclass
class Score:
    """Character counts (whitespace excluded) for one category."""

    gold: int = 0
    found: int = 0
    predicted: int = 0
    predicted_correct: int = 0

    @property
    def recall(self) -> float:
        return self.found / self.gold if self.gold else 1.0

    @property
    def precision(self) -> float:
        return self.predicted_correct / self.predicted if self.predicted else 1.0


@dataclass
class Report:
    """Character recall/precision overall, per category and per PHI kind; clinical spans damaged."""

    notes: int = 0
    chars: int = 0
    failures: int = 0
    overall: Score = field(default_factory=Score)
    by_category: dict[str, Score] = field(default_factory=dict)
    by_kind: dict[str, Score] = field(default_factory=dict)
    keep_total: int = 0
    keep_damaged: int = 0
    missed_examples: list[tuple[str, str]] = field(default_factory=list)

    def format(self, examples: bool = False) -> str:
        """A plain-text table."""
        o = self.overall
        lines = [
            f"notes: {self.notes}   characters: {self.chars}   analysis failures: {self.failures}",
            f"overall: recall {o.recall:.3f}  precision {o.precision:.3f}  (PHI chars {o.gold})",
            f"clinical spans damaged: {self.keep_damaged}/{self.keep_total}",
            f"{'category':<14}{'recall':>8}{'precision':>11}{'PHI chars':>11}",
        ]
        for name, s in sorted(self.by_category.items()):
            lines.append(f"{name:<14}{s.recall:>8.3f}{s.precision:>11.3f}{s.gold:>11}")
        lines.append(f"{'kind':<14}{'recall':>8}{'':>11}{'PHI chars':>11}")
        for name, s in sorted(self.by_kind.items()):
            lines.append(f"{name:<14}{s.recall:>8.3f}{'':>11}{s.gold:>11}")
        if examples and self.missed_examples:
            lines.append("missed (kind: text):")
            lines += [f"  {k}: {t!r}" for k, t in self.missed_examples[:40]]
        return "\n".join(lines)


def _detect(scrubber: Detector | Callable[[list[str]], Sequence[Detections]], texts: list[str]) -> list[Detections]:
    if hasattr(scrubber, "detect"):
        return list(scrubber.detect(texts))
    return list(scrubber(texts))


def evaluate(scrubber: Detector | Callable[[list[str]], Sequence[Detections]], notes: Iterable[Note]) -> Report:
    """Score a detector on notes: a TextScrubber, or a callable from texts to (start, end, entity) lists.

    A text whose analysis failed (None) counts as nothing found: its PHI is all missed.
    """
    notes = list(notes)
    found = _detect(scrubber, [n.text for n in notes])
    rep = Report(notes=len(notes), chars=sum(len(n.text) for n in notes))
    for note, dets in zip(notes, found, strict=True):
        if dets is None:
            rep.failures += 1
            dets = []
        text = note.text
        hit = bytearray(len(text))
        hit_cat: list[str | None] = [None] * len(text)
        for s, e, ent in dets:
            cat = DETECTED_CATEGORY.get(ent, "OTHER")
            for i in range(max(0, s), min(e, len(text))):
                hit[i] = 1
                hit_cat[i] = hit_cat[i] or cat
        gold = bytearray(len(text))
        for sp in note.phi:
            cat = CATEGORY[sp.kind]
            for target in (
                rep.overall,
                rep.by_category.setdefault(cat, Score()),
                rep.by_kind.setdefault(sp.kind, Score()),
            ):
                for i in range(sp.start, sp.end):
                    if not text[i].isspace():
                        target.gold += 1
                        target.found += hit[i]
            for i in range(sp.start, sp.end):
                gold[i] = 1
            if any(not hit[i] and not text[i].isspace() for i in range(sp.start, sp.end)):
                rep.missed_examples.append((sp.kind, text[sp.start : sp.end]))
        for i, c in enumerate(hit_cat):
            if c is None or text[i].isspace():
                continue
            for target in (rep.overall, rep.by_category.setdefault(c, Score())):
                target.predicted += 1
                target.predicted_correct += gold[i]
        for sp in note.keep:
            rep.keep_total += 1
            rep.keep_damaged += any(hit[i] for i in range(sp.start, sp.end))
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report for cohortsync's scrubber on the synthetic set."""
    from cohortsync.deid.text import TextScrubber, TextSettings

    ap = argparse.ArgumentParser(prog="python -m cohortsync.deid.evalset")
    ap.add_argument("--notes", type=int, default=320)
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=TextSettings.model)
    ap.add_argument("--no-deny-list", action="store_true", help="do not use the known-PHI list")
    ap.add_argument("--examples", action="store_true", help="also print missed spans (synthetic PHI only)")
    args = ap.parse_args(argv)
    es = make_evalset(args.notes, args.seed)
    settings = TextSettings(model=args.model, workers=args.workers)
    with TextScrubber(settings, key=b"evalset-key", deny_list=() if args.no_deny_list else es.known_phi) as s:
        rep = evaluate(s, es.notes)
    print(rep.format(examples=args.examples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
