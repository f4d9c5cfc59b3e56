"""Recognizers for US clinical notes, on top of Presidio.

Presidio's defaults miss what notes are full of (no-year dates, ``1-``/``+1`` phones, MRN/HAR numbers,
street addresses, lowercase names after titles) and flag clinical abbreviations as places. Everything
here is a regex with its context *inside* the pattern (no lemma-based context enhancer, which needs
the slow spaCy parser/lemmatizer), so a match is decided by this file alone and can be tested.

Importing this module pins ``tldextract`` (which Presidio loads) to its bundled public suffix list (no
network). It imports neither Presidio nor spaCy: the recognizers run in the sync process too
(:mod:`cohortsync.deid.rulebase`).
"""

from __future__ import annotations

import os

# Must precede any presidio import: tldextract reads it when its module-level extractor is built.
os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""

import bisect
import calendar
import datetime as dt
import functools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cohortsync.deid import lexicon
from cohortsync.deid.rulebase import LocalRecognizer, RecognizerResult

# If presidio (so tldextract) was imported before us (another engine in the process), cut the URLs it read.
if "tldextract" in sys.modules:
    sys.modules["tldextract"].tldextract.TLD_EXTRACTOR.suffix_list_urls = ()

# ---------------------------------------------------------------------------------------------------
# Entity types and how the scrubber treats them
# ---------------------------------------------------------------------------------------------------

PERSON = "PERSON"
DATE = "DATE"
#: Replacement tag per entity type (PERSON gets a keyed surrogate and DATE a shift instead).
TAGS: dict[str, str] = {
    "MRN": "[MRN]",
    "ACCOUNT": "[ACCOUNT]",
    "SERIAL": "[SERIAL]",
    "LICENSE": "[LICENSE]",
    "ID": "[ID]",
    "SSN": "[SSN]",
    "PHONE": "[PHONE]",
    "EMAIL": "[EMAIL]",
    "URL": "[URL]",
    "IP_ADDRESS": "[IP]",
    "CREDIT_CARD": "[ID]",
    "ADDRESS": "[ADDRESS]",
    "ZIP": "[ZIP]",
    "LOCATION": "[LOCATION]",
    "FACILITY": "[FACILITY]",
    "AGE": "90+",
    "KNOWN_PHI": "[REDACTED]",
    PERSON: "[NAME]",
    DATE: "[DATE]",
}
#: When spans of different types overlap, the higher priority names the merged span.
PRIORITY: dict[str, int] = {
    "EMAIL": 95, "URL": 92, "SSN": 90, "PHONE": 85, "MRN": 84, "ACCOUNT": 83, "SERIAL": 82, "LICENSE": 81,
    DATE: 80, "AGE": 79, "CREDIT_CARD": 78, "IP_ADDRESS": 77, "ADDRESS": 75, "ZIP": 70,
    "KNOWN_PHI": 65, PERSON: 60, "FACILITY": 58, "LOCATION": 50, "ID": 40,
}  # fmt: skip
#: Entity types produced by the spaCy model (low precision in notes: filtered by the allow-list).
NER_ENTITIES = frozenset({PERSON, "LOCATION"})

# ---------------------------------------------------------------------------------------------------
# Allow-list: clinical vocabulary the NER model likes to call a person or a place
# ---------------------------------------------------------------------------------------------------

ALLOW_LIST: frozenset[str] = frozenset(
    w.casefold()
    for w in """
    MD DO RN NP PA PO IV IM SC SQ SL PR NG PEG PICC CT MRI MRA PET US EKG ECG ECHO EEG EMG CXR KUB
    ED ER ICU CCU PACU OR PT OT SLP NICU PICU MICU SICU ICU/CCU OB GYN OB/GYN ENT GI ID HEENT CV CVS
    WBC RBC HGB HCT PLT MCV BMP CMP CBC LFT LFTS INR PTT BUN CR CREAT GFR EGFR NA K CL CO2 HCO3 MG
    PHOS CA ALT AST ALP GGT LDH CK CPK TSH T3 T4 A1C HBA1C LDL HDL TG BNP PROBNP TROP TROPONIN ESR
    CRP PCT UA UDS ABG VBG LACTATE GLUCOSE HGBA1C PSA AFP CEA INR/PT BID TID QID QD QHS QAM QPM PRN
    QOD STAT NPO AC PC HS Q4H Q6H Q8H Q12H QW QWK DAILY WEEKLY MG MCG G KG L ML DL MMOL MEQ UNITS IU
    MMHG BPM CM MM MMOL/L MG/DL G/DL MEQ/L U/L NG/ML BP HR RR SPO2 O2 SAT TEMP BMI HTN DM DM2 T2DM
    CAD CHF COPD CKD ESRD AKI DVT PE MI STEMI NSTEMI CVA TIA AFIB A-FIB GERD UTI URI OSA BPH HLD HIV
    HCV HBV TB RA SLE MS ALS CP SOB DOE PND LE RLE LLE RUE LUE RUQ LUQ RLQ LLQ NAD ROS HPI PMH PSH
    FH SH A&O AOX3 PERRLA EOMI NKDA ALLERGIES CABG PCI TAVR EGD ERCP TURP LASIK HD CRRT BIPAP CPAP
    NIV ETT ASA NSAID NSAIDS APAP ACE ACEI ARB SSRI SNRI PPI LMWH TPA LASIX METFORMIN INSULIN
    LISINOPRIL METOPROLOL ATORVASTATIN ASPIRIN WARFARIN HEPARIN COUMADIN ELIQUIS XARELTO PLAVIX
    ZOFRAN TYLENOL MOTRIN ATIVAN HALDOL NORCO PERCOCET DILAUDID MORPHINE VANCOMYCIN ZOSYN
    APIXABAN AMOXICILLIN FUROSEMIDE ALBUTEROL GLARGINE LISPRO ASPART DETEMIR GABAPENTIN SERTRALINE
    LEVOTHYROXINE AMLODIPINE HYDROCHLOROTHIAZIDE LOSARTAN OMEPRAZOLE PANTOPRAZOLE SIMVASTATIN
    ROSUVASTATIN CARVEDILOL SPIRONOLACTONE CLOPIDOGREL TRAMADOL OXYCODONE HYDROCODONE ACETAMINOPHEN
    IBUPROFEN NAPROXEN DULOXETINE ESCITALOPRAM TRAZODONE QUETIAPINE DONEPEZIL TAMSULOSIN FINASTERIDE
    ALLOPURINOL COLCHICINE DIGOXIN AMIODARONE DILTIAZEM HYDRALAZINE NITROGLYCERIN ENOXAPARIN
    RIVAROXABAN DABIGATRAN CEPHALEXIN DOXYCYCLINE AZITHROMYCIN CIPROFLOXACIN LEVOFLOXACIN
    NITROFURANTOIN METRONIDAZOLE CLINDAMYCIN PIPERACILLIN TAZOBACTAM MEROPENEM FLUCONAZOLE
    ONDANSETRON LORAZEPAM HALOPERIDOL MIDAZOLAM FENTANYL HYDROMORPHONE NALOXONE BUDESONIDE
    FLUTICASONE TIOTROPIUM MONTELUKAST SITAGLIPTIN EMPAGLIFLOZIN DAPAGLIFLOZIN SEMAGLUTIDE
    LIRAGLUTIDE GLIPIZIDE PIOGLITAZONE ELECTRONICALLY PRIOR WT HT VS NO YES NONE DENIES
    ASTHMA MIGRAINE OBESITY PNEUMONIA HYPERLIPIDEMIA HYPERTENSION DIABETES OSTEOARTHRITIS ARTHRITIS
    OSTEOPOROSIS GOUT ANEMIA SEPSIS BRONCHITIS SINUSITIS PHARYNGITIS CELLULITIS DERMATITIS ECZEMA PSORIASIS
    DEPRESSION ANXIETY INSOMNIA DEMENTIA DELIRIUM SEIZURE EPILEPSY STROKE SYNCOPE VERTIGO NEUROPATHY
    HYPOTHYROIDISM HYPERTHYROIDISM CIRRHOSIS HEPATITIS PANCREATITIS CHOLECYSTITIS APPENDICITIS DIVERTICULITIS
    GASTRITIS COLITIS CONSTIPATION DIARRHEA NAUSEA VOMITING FEVER COUGH DYSPNEA EDEMA FATIGUE MALAISE
    ANGINA ARRHYTHMIA TACHYCARDIA BRADYCARDIA CARDIOMYOPATHY EMBOLISM THROMBOSIS ANEURYSM STENOSIS
    CANCER CARCINOMA LYMPHOMA LEUKEMIA MELANOMA TUMOR MASS NODULE CYST FRACTURE SPRAIN STRAIN CONCUSSION
    ACUTE CHRONIC SEVERE MILD MODERATE STABLE UNSTABLE BILATERAL LEFT RIGHT ANTERIOR POSTERIOR
    CHEST ABDOMEN PELVIS HEAD NECK SPINE LUMBAR CERVICAL THORACIC KNEE HIP SHOULDER ANKLE WRIST HAND FOOT
    HEART LUNG LUNGS LIVER KIDNEY KIDNEYS BRAIN BLADDER BOWEL COLON SKIN EYE EAR THROAT
    X-RAY XRAY RADIOGRAPH ULTRASOUND SONOGRAM MAMMOGRAM COLONOSCOPY ENDOSCOPY BIOPSY ANGIOGRAM
    CATHETERIZATION DIALYSIS INTUBATION TRANSFUSION VACCINE VACCINATION INFLUENZA COVID COVID-19 SARS-COV-2
    TEL FAX PHONE CELL PAGER READING ORDERING REFERRING INDICATION TECHNIQUE COMPARISON CLINIC NOTE
    MRN DOB HAR SSN ACCT CSN FIN DOS EXAM EMAIL E-MAIL ADDRESS HOME WORK MOBILE ACCESSION IMAGING
    RETURN RETURNS FOLLOW CONTINUE START STOP CALL TAKE SEE
    HOLD RESUME INCREASE DECREASE DISCONTINUE
    CEFTRIAXONE KEFLEX AUGMENTIN LEVAQUIN CIPRO FLAGYL PREDNISONE SOLUMEDROL DISCHARGE ADMISSION
    ASSESSMENT PLAN IMPRESSION FINDINGS HISTORY EXAM LABS VITALS MEDICATIONS PATIENT PROVIDER
    PHYSICIAN ATTENDING RESIDENT NURSE CONSULT CARDIOLOGY NEUROLOGY ONCOLOGY RADIOLOGY PULMONOLOGY
    NEPHROLOGY ENDOCRINOLOGY SURGERY MEDICINE PSYCHIATRY DERMATOLOGY HEMOGLOBIN HEMATOCRIT PLATELETS
    CREATININE POTASSIUM SODIUM CHLORIDE BICARBONATE MAGNESIUM FOLEY FOLLOW-UP FOLLOWUP F/U S/P H/O
    C/O R/O W/U D/C NL WNL HEENT/NECK
    """.split()  # noqa: SIM905
)

#: Words that end a name candidate found by context (after a title, before a credential).
_STOP = frozenset(
    """
    a an the and or but of to in on at by for from with without as is was were be been being am are
    has have had do does did not no yes he she they we it his her their its him them this that these
    those there here who whom which what when where why how all any some each every per via vs than
    then also only very more most less least today tonight yesterday tomorrow now again still said
    says saw see seen sees called calls call noted notes note states stated reports reported
    recommends recommended ordered orders agrees agreed will would can could should may might must
    please thanks thank regarding re cc dear sincerely regards signed dictated reviewed examined
    evaluated spoke discussed present presents presented came comes arrived visited is mr mrs ms
    miss dr doctor prof patient pt name attending physician provider nurse
    """.split()  # noqa: SIM905
)
#: Never part of a name, whatever the case.
HARD_STOP = frozenset(
    """
    a an the and or of to in on at by for from with as is was were be are has have had he she they
    we it his her their its him them this that these those there here who which what when where per
    via vs mr mrs ms miss dr doctor prof patient pt name today tonight yesterday tomorrow please
    """.split()  # noqa: SIM905
)


def is_allowed(span_text: str) -> bool:
    """True if every word of an NER span is clinical vocabulary, a number or punctuation."""
    words = [w for w in re.split(r"[\s,;:()\[\]]+", span_text.casefold()) if w]
    if not words:
        return True
    for w in words:
        core = w.strip(".-'\"")
        if not core or core in ALLOW_LIST or core in _STOP or any(c.isdigit() for c in core):
            continue
        if _name_kind(core) in ("stop", "word"):  # English or clinical, and no census name: not PHI by itself
            continue
        return False
    return True


def case_for_ner(line: str) -> str:
    """A line the NER model can read: an ALL-CAPS line (no lower-case letter) in title case, same length.

    The model was trained on mixed-case text and finds almost nothing in ``SON BILL CALLED``; offsets stay
    valid because title-casing ASCII letters keeps the length (other lines are returned unchanged).
    """
    if any(c.islower() for c in line) or not any(c.isupper() for c in line):
        return line
    out = re.sub(r"[A-Z][A-Z'’]*", lambda m: m.group()[0] + m.group()[1:].lower(), line)
    return out if len(out) == len(line) else line


_TITLE_WORDS = frozenset({"dr", "doctor", "mr", "mrs", "ms", "miss", "mx", "prof"})
_RELATIONS = frozenset(
    """
    wife husband son daughter mother father sister brother spouse partner friend caregiver niece nephew
    grandson granddaughter grandmother grandfather aunt uncle neighbor roommate boyfriend girlfriend
    """.split()  # noqa: SIM905
)
#: What turns a relation word into an in-law ("son-in-law", "SON IN LAW"), for every relation pattern below.
_IN_LAW = r"(?:[ \t]*-?[ \t]*in[ \t]*-?[ \t]*law\b)?"
_US_STATES = frozenset(
    w.casefold()
    for w in """
    AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH
    OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR USA US
    """.split()  # noqa: SIM905
) | frozenset(
    s.casefold()
    for s in [
        "Alabama",
        "Alaska",
        "Arizona",
        "Arkansas",
        "California",
        "Colorado",
        "Connecticut",
        "Delaware",
        "Florida",
        "Georgia",
        "Hawaii",
        "Idaho",
        "Illinois",
        "Indiana",
        "Iowa",
        "Kansas",
        "Kentucky",
        "Louisiana",
        "Maine",
        "Maryland",
        "Massachusetts",
        "Michigan",
        "Minnesota",
        "Mississippi",
        "Missouri",
        "Montana",
        "Nebraska",
        "Nevada",
        "New Hampshire",
        "New Jersey",
        "New Mexico",
        "New York",
        "North Carolina",
        "North Dakota",
        "Ohio",
        "Oklahoma",
        "Oregon",
        "Pennsylvania",
        "Rhode Island",
        "South Carolina",
        "South Dakota",
        "Tennessee",
        "Texas",
        "Utah",
        "Vermont",
        "Virginia",
        "Washington",
        "West Virginia",
        "Wisconsin",
        "Wyoming",
        "United States",
        "America",
    ]
)
_WORD = re.compile(r"[^\s]+")
_NER_SEGMENT = re.compile(r"[^\n()\[\]|;]+")  # a model span never crosses a line end, bracket, bar or semicolon


def _spacy_stop_words() -> frozenset[str]:
    """spaCy's English stop words, read from their file: importing ``spacy`` itself costs ~0.6 s."""
    loaded = sys.modules.get("spacy.lang.en.stop_words")
    if loaded is None:
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("spacy")
        if spec is None or spec.origin is None:
            raise ImportError("spaCy is not installed")
        path = Path(spec.origin).parent / "lang" / "en" / "stop_words.py"
        file_spec = importlib.util.spec_from_file_location("_cohortsync_spacy_en_stop_words", path)
        if file_spec is None or file_spec.loader is None:
            raise ImportError(f"cannot read {path}")
        loaded = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(loaded)
    return frozenset(loaded.STOP_WORDS)


#: Common words of note templates and clinical prose that are not names (for the NER line filter only).
_COMMON = frozenset(
    """
    date age rx next health recent compared correlate report reports type inpatient outpatient account admitted
    condition department standard results result urinary low high reason pertinent requested initial essential
    coronary blood small large normal abnormal negative positive unremarkable noted impression plan history
    physical exam examination review systems general appearance alert oriented awake pleasant comfortable
    medications medication allergies allergy diagnosis diagnoses problem problems procedure procedures findings
    technique clinical indication comparison summary hospital course discharge admission instructions
    diet activity follow follow-up return precautions signs symptoms pain denies reports states
    sex male female man woman gender race ethnicity language english spanish married single widowed divorced
    status code full dnr dni social family surgical past medical present illness chief complaint
    vital vitals temperature pulse respiratory rate weight height oxygen saturation room air
    cardiac pulmonary renal hepatic neurologic neurological gastrointestinal musculoskeletal psychiatric
    atrial ventricular cerebral sigmoid osseous gallbladder gray-white lobe lobes upper lower middle mild
    new old prior previous current daily weekly monthly yearly today yesterday tomorrow morning evening night
    reviewed ordered started stopped continued increased decreased given received tolerated improved
    stable worse better unchanged resolved ongoing pending completed scheduled referred requested
    """.split()  # noqa: SIM905
)
#: Words that are never the start of a name or place by themselves (NER is skipped on lines holding only these).
VOCABULARY = (
    _COMMON
    | ALLOW_LIST
    | _STOP
    | HARD_STOP
    | _RELATIONS
    | _TITLE_WORDS
    | _US_STATES
    | frozenset(m.casefold() for m in calendar.month_name[1:])
    | frozenset(m.casefold() for m in calendar.month_abbr[1:])
    | frozenset(d.casefold() for d in calendar.day_name)
    | frozenset(d.casefold() for d in calendar.day_abbr)
    | frozenset(w.casefold() for w in _spacy_stop_words())
)


def clean_ner_spans(text: str, start: int, end: int, entity: str) -> list[tuple[int, int]]:
    """An NER span cut to what can be PHI: per line or bracket, without vocabulary, titles or numbers at its edges.

    The model's PERSON/LOCATION spans in notes swallow neighbours (``husband Jessica``, ``Wt 64.5 kg``,
    ``2016\\n\\nDear Dr.``); a PERSON without a capital letter is dropped (context rules find lowercase
    names), and so is a LOCATION that is only a state (states are not identifying under HIPAA).
    """
    out: list[tuple[int, int]] = []
    for seg in _NER_SEGMENT.finditer(text[start:end]):
        line_start = start + seg.start()
        line = seg.group()
        words = [(line_start + m.start(), line_start + m.end()) for m in _WORD.finditer(line)]

        def junk(w: tuple[int, int]) -> bool:
            tok = text[w[0] : w[1]].strip(".,;:()[]\"'")
            core = tok.casefold()
            return (
                not core
                or core in ALLOW_LIST
                or core in _STOP
                or core in _TITLE_WORDS
                or core in _RELATIONS
                or any(c.isdigit() for c in core)
                or (entity == PERSON and tok[:1].islower())
                or _name_kind(core) == "stop"
                or (entity == PERSON and _name_kind(core) == "word")
            )

        while words and junk(words[0]):
            words.pop(0)
        while words and junk(words[-1]):
            words.pop()
        if not words:
            continue
        s, e = words[0][0], words[-1][1]
        while e > s and text[e - 1] in ".,;:)":
            e -= 1
        piece = text[s:e]
        if entity == PERSON and (not any(c.isupper() for c in piece) or any(c.isdigit() for c in piece)):
            continue
        if entity != PERSON and piece.casefold().strip(".") in _US_STATES:
            continue
        if is_allowed(piece):
            continue
        piece_words = _LEX_TOKEN.findall(piece)
        kinds = [_name_kind(w) for w in piece_words]
        lead = text[text.rfind("\n", 0, s) + 1 : s].rstrip()
        opens = not lead or lead.endswith((":", "-", ".", ";", ",", ">", ")"))
        if entity != PERSON and len(piece_words) == 1 and "strong" not in kinds and lexicon.fold(piece) not in lexicon.PLACES:
            continue  # the model's one-word place that is no town and no name ("Levo", "Conitinue")
        if entity == PERSON and len(piece_words) == 1 and kinds != ["strong"] and opens:
            continue  # one word opening a line or field ("Lungsounds:", "Alert"): a label, not a name
        if piece.isupper() and "strong" not in kinds:
            continue  # an ALL-CAPS line read in title case: the model calls "YELLOW URINE" a person
        if len(piece_words) == 1 and _given_as_drug(text, s, e):
            continue  # a drug's name that is also a census name, given as a drug ("GIVEN ALLEGRA PO")
        if entity == PERSON and not any(k in ("strong", "unknown") for k in kinds) and kinds.count("maybe") < 2 and opens:
            continue  # one census name that is also a word opening a line or field ("Alert", "Swan"): not enough
        if entity == PERSON:
            s, e = _widen_name(text, s, e)
            words_now = _LEX_TOKEN.findall(text, s, e)
            if _EPONYM_NEXT.match(text, e) or (len(words_now) > 1 and _EPONYM_NEXT.match(" " + words_now[-1])):
                continue  # "Hickman Cath", "Swallow Study", "Foley catheter": an eponym or a device, not a person
        out.append((s, e))
    return out


_LEFT_NAME = re.compile(r"\b([A-Z][a-z][A-Za-z'’-]*) $")
_RIGHT_NAME = re.compile(r" ([A-Z][a-z][A-Za-z'’-]*)\b")


def _widen_name(text: str, s: int, e: int) -> tuple[int, int]:
    """Take in a capitalised non-vocabulary word right before or after a model PERSON (``Ivy`` of ``Ivy Thomas``
    when the model saw only ``Thomas``): the model often drops a first name that is also a common word."""
    left = _LEFT_NAME.search(text, max(0, s - 40), s)
    if left and _name_kind(left.group(1)) in ("strong", "maybe", "unknown"):
        s = left.start(1)
    right = _RIGHT_NAME.match(text, e)
    if right and _name_kind(right.group(1)) in ("strong", "maybe", "unknown"):
        e = right.end(1)
    return s, e


# ---------------------------------------------------------------------------------------------------
# Dates: find, parse, shift and write back in the original format
# ---------------------------------------------------------------------------------------------------

#: Year assumed when parsing dates written without one; 2000 is a leap year, so ``02/29`` still parses.
REFERENCE_YEAR = 2000
#: A non-leap year: dates without a year are shifted modulo 365 days in it.
NO_YEAR_CYCLE = 2001
_MONTH_NAMES = {name.casefold(): i for i, name in enumerate(calendar.month_name) if name}
_MONTH_ABBR = {name.casefold(): i for i, name in enumerate(calendar.month_abbr) if name}
_MONTH_ABBR["sept"] = 9
_MON = (
    r"(?P<mon>(?:(?i:January|February|March|April|June|July|August|September|October|November|December"
    r"|Jan|Feb|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov)|Mar|MAR|Dec|DEC)\.?|May|MAY)"
)
_D = r"(?P<d>[0-3]?\d)"
_SUF = r"(?P<suf>st|nd|rd|th)?"
_B = r"(?<![\w/.-])"  # left boundary: no digit, letter, slash, dot or dash glued on
_E = r"(?![\w/-]|\.\d)"  # right boundary
# A date may follow a word or another date and a dash ("TOXICITY-9/2/92", "8/2-8/10"), not a number ("10-5/5").
_B_MD = r"(?<![\w/.])(?:(?<!-)|(?<=[A-Za-z)\]]-)|(?<=/\d-)|(?<=/\d\d-)|(?<=[ \t(]-))"  # also "7/22 -7/23"
# ... for a short date, which may run into a dash ("7/81-ECHO", "3/16->"), a trailing slash ("7/22/ cxr"), a
# count or a time of day ("cx 7/22x2", "7/22am")
_E_MD = r"(?!(?!x\d|(?i:[ap]m)\b)\w|/\w|\.\d)"
_DATE_CONTEXT = re.compile(
    r"(?:\b(?:on|since|from|to|until|till|through|thru|dated?|dos|dob|born|seen|admitted|admit|"
    r"discharged?|visit|effective|starting|started|start|stopped|last|next|scheduled|returns?|"
    r"returned|f/u|follow[- ]?up|appt|appointment|surgery|procedure|performed|done|drawn|collected|"
    r"obtained|received|before|after|by|of|onset|between|and|-|as\s+of|weeks?|days?|months?|transcribed|"
    r"dictated|signed|reviewed|printed|faxed|sent|updated)\s*[:,(]?\s*$)",
    re.IGNORECASE,
)

_DATE_FORMATS: list[tuple[str, re.Pattern[str]]] = [
    ("iso", re.compile(_B + r"(?P<y>(?:19|20)\d\d)(?P<s1>[-/.])(?P<m>[01]?\d)(?P=s1)" + _D + r"(?!\d)(?![/-]\d)")),
    ("mdy", re.compile(_B_MD + r"(?P<m>[01]?\d)(?P<s1>[/.-])" + _D + r"(?P=s1)(?P<y>(?:19|20)\d\d|\d\d)" + _E_MD)),
    ("dmony", re.compile(_B + _D + r"(?P<s1>[- ]?)(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)"
                         r"(?P=s1)(?P<y>(?:19|20)\d\d|\d\d)" + _E, re.IGNORECASE)),
    ("mdy_name", re.compile(r"\b" + _MON + r"(?P<s1>\s+|-|(?<=\.))" + _D + _SUF + r"(?:(?P<s2>,\s*|\s+|,)(?P<y>(?:19|20)\d\d))?"
                            r"(?!\d|:\d)")),  # "Jul 22: family meeting", not "Jul 22:30"
    ("dmy_name", re.compile(r"(?<![\w.])" + _D + _SUF + r"(?P<s1>\s+(?:of\s+)?)" + _MON
                            + r"(?:(?P<s2>,?\s+)(?P<y>(?:19|20)\d\d))?\b(?!\d|:\d)")),
    ("my_name", re.compile(r"\b" + _MON + r"(?P<s1>,?\s+|-)(?P<y>(?:19|20)\d\d)(?!\d)")),
    ("my", re.compile(_B + r"(?P<m>[01]?\d)[/-](?P<y>(?:19|20)\d\d)" + _E)),
    # Month name and a two-digit year that cannot be a day ("OCT 93", "Jul '87", "nov, 96").
    ("my2_name", re.compile(r"\b" + _MON + r"(?P<s1>,?\s*'|,?\s+|-)(?P<y>[4-9]\d)(?![\w/'’]|[:.]\d)")),
    # A two-digit year after a dot ("11/21.93"): separators mixed as notes type them.
    ("mdy_dot", re.compile(_B_MD + r"(?P<m>[01]?\d)/" + _D + r"\.(?P<y>\d\d)(?![\w/.])")),
    ("md", re.compile(_B_MD + r"(?P<m>[01]?\d)/" + _D + _E_MD)),
    # The same with spaces around the slash, as notes type them ("7 /22", "7/ 22"); never inside a chain of
    # slashes ("PSV 10/ 5", "7.36/ 29/ 103/ -7/ 17": a blood gas).
    ("md_sp", re.compile(_B_MD + r"(?P<m>[01]?\d)(?P<s1>[ \t]+/[ \t]*|/[ \t]+)" + _D + _E_MD)),
    # Month and two-digit year ("s/p MI 8/88"): the second part cannot be a day.
    ("my2", re.compile(_B_MD + r"(?P<m>[01]?\d)/(?P<y>[4-9]\d)" + _E_MD)),
    ("md_dash", re.compile(_B + r"(?P<m>[01]?\d)-" + _D + _E)),
    # Day and month name without a year ("22-Jul", "3-DEC"): only with the dash, so "3 dec" (decreased) stays.
    ("dmon", re.compile(_B + _D + r"(?P<s1>-)(?P<mon>(?i:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec))"
                        r"(?![\w-])")),
    # Day and month glued without a year ("22jul", "3NOV"); never "may", nor lower-case "mar"/"dec".
    ("dmon_glued", re.compile(_B + _D + r"(?P<mon>(?i:Jan|Feb|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov)|Mar|MAR|Dec|DEC)"
                              r"(?![\w-])")),
    ("md_dot", re.compile(r"(?<![\w/.,-])(?P<m>[01]?\d)\." + _D + r"(?![\w/.-])")),
    # A month name alone ("in sept.", "MARCH OF 1993"): a date element under Safe Harbor; never "May".
    ("mon", re.compile(r"\b(?P<mon>(?i:January|February|March|April|June|July|August|September|October|November"
                       r"|December)|(?:(?i:Jan|Feb|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov)|Mar|MAR|Dec|DEC)\.?)(?![\w-]|/\d|\.\w)")),
]  # fmt: skip
_FORMAT_RE = dict(_DATE_FORMATS)


def _month_of(name: str) -> int:
    key = name.rstrip(".").casefold()
    return _MONTH_NAMES.get(key) or _MONTH_ABBR[key]


class ParsedDate(NamedTuple):
    """A date found in text, with what is needed to write a shifted one the same way."""

    fmt: str
    match: re.Match[str]
    date: dt.date
    has_year: bool
    has_day: bool


def _to_date(fmt: str, m: re.Match[str]) -> ParsedDate | None:
    g = m.groupdict()
    month = int(g["m"]) if g.get("m") else _month_of(g["mon"])
    has_day = g.get("d") is not None
    day = int(g["d"]) if has_day else 15
    has_year = g.get("y") is not None
    year = REFERENCE_YEAR
    if has_year:
        year = int(g["y"])
        if len(g["y"]) == 2:
            year += 2000 if year <= (dt.date.today().year % 100) + 1 else 1900
    try:
        return ParsedDate(fmt, m, dt.date(year, month, day), has_year, has_day)
    except ValueError:
        return None


def parse_date(text: str) -> ParsedDate | None:
    """Parse a whole string as one of the supported date formats (US month-first order)."""
    for fmt, rx in _DATE_FORMATS:
        m = rx.fullmatch(text)
        if m:
            parsed = _to_date(fmt, m)
            if parsed:
                return parsed
    return None


def _num_like(original: str, value: int, padded: bool) -> str:
    return f"{value:02d}" if padded or (len(original) == 2 and original.startswith("0")) else str(value)


def _name_like(original: str, month: int) -> str:
    core = original.rstrip(".")
    dot = original[len(core) :]
    key = core.casefold()
    full = key in _MONTH_NAMES  # "May" counts as a full name
    if full:
        out = calendar.month_name[month]
    elif key == "sept" and month == 9:
        out = "Sept"
    else:
        out = calendar.month_abbr[month]
    if core.isupper() and len(core) > 1 and not (key == "may" and core == "May"):
        out = out.upper()
    elif core.islower():
        out = out.lower()
    return out + ("" if full else dot)


def _ordinal(day: int, original: str) -> str:
    suf = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return suf.upper() if original.isupper() else suf


def format_like(parsed: ParsedDate, new: dt.date) -> str:
    """Write ``new`` exactly as ``parsed`` was written: separators, padding, month names, ordinals."""
    m = parsed.match
    g = m.groupdict()
    nums = [g[k] for k in ("m", "d") if g.get(k)]
    # Zero-padded if a part shows it (03/04), or if every part has two digits in a numeric format
    # (12/28/2020 reads as MM/DD/YYYY); a single-digit part (1/2/21, 4 Mar 2021) means no padding.
    numeric = parsed.fmt in ("iso", "mdy", "mdy_dot", "md", "md_sp", "md_dash", "md_dot", "my", "my2") or (
        parsed.fmt == "dmony" and g.get("s1") == "-"
    )
    padded = any(len(n) == 2 and n.startswith("0") for n in nums) or (numeric and bool(nums) and all(len(n) == 2 for n in nums))
    out: list[str] = []
    pos = m.start()
    spans = sorted((m.start(k), m.end(k), k) for k in ("y", "m", "d", "mon", "suf") if g.get(k) is not None)
    for start, end, k in spans:
        out.append(m.string[pos:start])
        orig = g[k]
        if k == "y":
            out.append(str(new.year) if len(orig) == 4 else f"{new.year % 100:02d}")
        elif k == "m":
            out.append(_num_like(orig, new.month, padded))
        elif k == "d":
            out.append(_num_like(orig, new.day, padded))
        elif k == "mon":
            out.append(_name_like(orig, new.month))
        else:
            out.append(_ordinal(new.day, orig))
        pos = end
    out.append(m.string[pos : m.end()])
    return "".join(out)


def shift_date_text(text: str, days: int) -> str | None:
    """The date in ``text`` moved by ``days``, in the same format; None if ``text`` is not a date we know.

    Without a year (``07/11``, ``Jun 11``) the shift runs on a 365-day calendar (:data:`NO_YEAR_CYCLE`,
    Feb 29 read as Feb 28), so shifting back by ``-days`` always restores the text; the true date may be
    one day off across a leap day, which the missing year makes unknowable anyway. Without a day
    (``March 2021``) the middle of the month is shifted and month and year are written.
    """
    parsed = parse_date(text)
    if parsed is None:
        return None
    try:
        if parsed.has_year:
            new = parsed.date + dt.timedelta(days=days)
        else:
            d = parsed.date
            base = dt.date(NO_YEAR_CYCLE, d.month, min(d.day, 28) if d.month == 2 else d.day)
            doy = (base - dt.date(NO_YEAR_CYCLE, 1, 1)).days
            new = dt.date(NO_YEAR_CYCLE, 1, 1) + dt.timedelta(days=(doy + days) % 365)
    except OverflowError:
        return None
    return format_like(parsed, new)


# ---------------------------------------------------------------------------------------------------
# Presidio recognizers
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One regex; the span reported is group ``v`` if the pattern has one, else the whole match."""

    entity: str
    pattern: re.Pattern[str]
    score: float = 0.9
    check: Callable[[re.Match[str]], bool] | None = None
    #: A cheap pattern the text must contain for the rule to run at all (speed only, never recall).
    needs: re.Pattern[str] | None = None


class RegexRecognizer(LocalRecognizer):
    """A Presidio recognizer made of :class:`Rule` objects (context lives in the regex)."""

    def __init__(self, name: str, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self.label = name
        super().__init__(supported_entities=sorted({r.entity for r in rules}), name=name, supported_language="en")

    def load(self) -> None:
        """Nothing to load: the patterns are compiled at import."""

    def analyze(self, text: str, entities: list[str] | None, nlp_artifacts: Any = None) -> list[RecognizerResult]:
        """Run every rule over the text."""
        out: list[RecognizerResult] = []
        for rule in self.rules:
            if entities and rule.entity not in entities:
                continue
            if rule.needs is not None and rule.needs.search(text) is None:
                continue
            group = "v" if "v" in rule.pattern.groupindex else 0
            for m in rule.pattern.finditer(text):
                start, end = m.span(group)
                if start < 0 or start == end or (rule.check is not None and not rule.check(m)):
                    continue
                out.append(self._result(rule.entity, start, end, rule.score))
        return out

    def _result(self, entity: str, start: int, end: int, score: float) -> RecognizerResult:
        return RecognizerResult(
            entity_type=entity,
            start=start,
            end=end,
            score=score,
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.label,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


def _flags(ci: bool = True) -> int:
    return re.IGNORECASE if ci else 0


# --- identifiers -------------------------------------------------------------------------------------
def _not_time_range(m: re.Match[str]) -> bool:
    """``1900-0700`` (a shift) and ``100-1112`` (a range) are not identifiers; ``954-1183`` (a phone) is."""
    v = m.group("v")
    if re.fullmatch(r"\d{3}-\d{4}", v):  # a phone unless it rises after a measure ("SVR 954-1183", "IS 750-1000")
        low, high = (int(x) for x in v.split("-"))
        before = m.string[max(0, m.start() - 24) : m.start()].rsplit("\n", 1)[-1]
        return not (low < high < 4 * low and _MEASURE_BEFORE.search(before) and not _PHONE_CUE.search(before))
    return not re.fullmatch(r"\d{1,5}-\d{1,5}", v)


#: Measures and words that a range of values follows ("SVR 954-1183", "TV IMPROVED TO 900-1000").
_MEASURE_BEFORE = re.compile(
    r"\b(?:svr|pvr|hr|tv|vt|is|co|cvp|uo|uop|u/o|map|rate|volumes?|voiding|void|output|ranged?|between|from|to|"
    r"in\s+the|of|@|~|approx|about|bs|glucose|plt|plts|platelets)\b[^\d\n]{0,12}$",
    re.IGNORECASE,
)
_PHONE_CUE = re.compile(r"\b(?:phone|ph|tel|telephone|call|called|cell|pager|beeper|fax|contact|number|#)", re.IGNORECASE)


_PSEP = r"(?:[ \t]*[.-][ \t]*|[ \t]+)?"  # between phone digit groups: any of ". -", with spaces around
_SEP = r"\s*(?:number|num|no\.?|nbr|#|id)?\s*(?:is|:|#|=|-|\.)?\s*#?\s*"
_IDV = r"(?P<v>(?=[A-Z0-9-]*\d)[A-Z]{0,4}-?\d[A-Z0-9-]{2,}(?<!-))"
IDENTIFIER_RULES = [
    Rule("MRN", re.compile(r"\b(?:MRN|MR|medical\s+record|med\s+rec|record|chart|hospital\s+(?:number|no|#))"
                           + _SEP + _IDV, re.IGNORECASE), 0.95),
    Rule("ACCOUNT", re.compile(r"\b(?:acct|account|HAR|CSN|FIN|encounter|member|subscriber|policy|claim|group|"
                               r"insurance|medicaid|medicare|beneficiary|patient\s+id|pt\s+id|case|ID)"
                               + _SEP + _IDV, re.IGNORECASE), 0.9),
    Rule("SERIAL", re.compile(r"\b(?:serial|S/N|SN|device\s+(?:id|serial)|UDI|lot|model|catalog|ref|"
                              r"pacemaker|ICD\s+serial|implant\s+id)" + _SEP
                              + r"(?P<v>(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{3,}(?<!-))", re.IGNORECASE), 0.9),
    Rule("LICENSE", re.compile(r"\b(?:licen[cs]e|lic|DEA|NPI|certificate|cert|registration|plate|permit)"
                               + _SEP + r"(?P<v>(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{3,}(?<!-))", re.IGNORECASE), 0.9),
    Rule("LICENSE", re.compile(r"(?<![\w-])(?P<v>[ABCDEFGHJKLMPRSTUX][A-Z]\d{7})(?![\w-])"), 0.6),  # DEA number
    Rule("SERIAL", re.compile(r"\b(?:VIN)\s*[:#]?\s*(?P<v>[A-HJ-NPR-Z0-9]{17})\b", re.IGNORECASE), 0.95),
    Rule("SSN", re.compile(r"(?<![\d-])(?P<v>\d{3}-\d{2}-\d{4})(?![\d-])"), 0.95),
    Rule("SSN", re.compile(r"\b(?:SSN|social\s+security(?:\s+(?:number|no\.?|#))?|SS#)\s*[:#]?\s*"
                           r"(?P<v>\d{3}[\s.-]?\d{2}[\s.-]?\d{4})(?!\d)", re.IGNORECASE), 0.95),
    Rule("PHONE", re.compile(r"(?<![\w+])(?P<v>(?:\+?1[\s.-]?)?(?:\(\d{3}\)|\b[2-9]\d{2})" + _PSEP + r"\d{3}" + _PSEP
                             + r"\d{4,5}"
                             r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,6})?)(?![\d-])", re.IGNORECASE), 0.9),
    Rule("PHONE", re.compile(r"\b(?:phone|ph|tel|telephone|cell|mobile|fax|pager|pgr|call|contact|home|work)\s*"
                             r"(?:#|no\.?|number)?\s*[:#]?\s*(?P<v>\d{3}[\s.-]?\d{4}|\d{3}[\s./-]?\d{3}[\s.-]?\d{4})(?!\d)",
                             re.IGNORECASE), 0.9),
    # An internal extension written with its exchange digit ("page at 5-4321", "call 4-8356"), after a phone word.
    Rule("PHONE", re.compile(r"\b(?:call|calls|called|phone|ph|tel|page|paged|pager|pgr|pg|beeper|ext|extension|x)\.?"
                             r"[ \t]*(?:at|#|:)?[ \t]*(?P<v>\d-\d{4})(?![\d/:-]|\.\d)", re.IGNORECASE), 0.85),
    # Pagers and extensions: 4-6 digits after a pager word ("Pager #54321", "PG 33445", "beeper number 55037").
    Rule("PHONE", re.compile(r"\b(?:pager|pgr|pg|beeper|beep|page|paged|ext|extension|x(?=\d))\.?[ \t]*"
                             r"(?:#|no\.?|number|num)?[ \t]*[:#]?[ \t]*#?[ \t]*(?P<v>\d{4,6})"
                             r"(?![\d/:-]|\.\d|[ \t]*(?:mg|ml|cc|units?)\b)",
                             re.IGNORECASE), 0.85, None, re.compile(r"(?i)p[a-z]*g|beep|ext|x\d")),
    Rule("SSN", re.compile(r"(?<![\d-])(?P<v>\d{3}[ .]\d{2}[ .]\d{4})(?![\d-])"), 0.7),
    Rule("ACCOUNT", re.compile(r"\b(?:plan|reference|ref|confirmation|authorization|auth|tracking|ticket|requisition|"
                               r"specimen|accession|invoice|voucher|visit|booking)\s*(?:#|no\.?|number|num|id)\s*[:#]?\s*#?\s*"
                               + _IDV, re.IGNORECASE), 0.9),
    Rule("IP_ADDRESS", re.compile(r"(?<![\w:])(?P<v>(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|"
                                  r"(?=[0-9A-Fa-f:]*::)(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?)"
                                  r"(?![\w:])"), 0.7, None, re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f:]*:")),
    Rule("URL", re.compile(r"(?<![\w@.])(?P<v>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|org|net|edu|gov|us|io|info|health)"
                           r"(?:/[^\s<>\"')\]]*)?)(?![\w@])", re.IGNORECASE), 0.7, None,
         re.compile(r"(?i)\.(?:com|org|net|edu|gov|us|io|info|health)\b")),
    Rule("EMAIL", re.compile(r"(?P<v>\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})\b"), 1.0),
    Rule("URL", re.compile(r"(?P<v>\b(?:https?://|www\.)[^\s<>\"')\]]+)", re.IGNORECASE), 0.9),
    Rule("IP_ADDRESS", re.compile(r"(?<![\d.])(?P<v>(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d))"
                                  r"(?![\d.])"), 0.6),
    # Any run of 7+ digits (dashes allowed) is an identifier of some kind in a note.
    Rule("ID", re.compile(r"(?<![\w.,/-])(?P<v>\d(?:-?\d){6,}[A-Z]?)(?![\w/]|[.,]\d)"), 0.6, _not_time_range),
    Rule("ID", re.compile(r"(?<![\w-])(?P<v>[A-Z]{1,3}\d{6,}|\d{6,}[A-Z]{1,3})(?![\w-])"), 0.6),
]  # fmt: skip

# --- ages over 89 ------------------------------------------------------------------------------------
_AGE = r"(?P<v>9\d|1[0-2]\d)"
AGE_RULES = [
    Rule(
        "AGE",
        re.compile(
            r"(?<![\d.])" + _AGE + r"(?:\s*|-)(?:years?|yrs?|y\.?\s?o\.?\b|yo\b|y/o|-?year-old|"
            r"year\s+old|yr\s+old|-?yo\b|M\b|F\b)",
            re.IGNORECASE,
        ),
        0.9,
    ),
    Rule("AGE", re.compile(r"\b(?:age|aged|age:)\s*:?\s*" + _AGE + r"(?![\d.])", re.IGNORECASE), 0.9),
    Rule("AGE", re.compile(r"\b(?:in\s+(?:his|her|their)\s+)(?P<v>90s|nineties)\b", re.IGNORECASE), 0.7),
    # A birthday's ordinal is an age ("her 90th birthday", "101ST BDAY").
    Rule("AGE", re.compile(r"(?<![\d.])(?P<v>(?:9\d|1[0-2]\d)(?:st|nd|rd|th))[ \t]+(?:birthday|bday|b-day)\b",
                           re.IGNORECASE), 0.9),
]


# --- addresses ---------------------------------------------------------------------------------------
def _street_words_ok(m: re.Match[str]) -> bool:
    """``3 WAY FOLEY IN PLACE`` is no street: a street name holds no function or clinical word."""
    words = []
    for w in _LEX_TOKEN.findall(re.sub(r"^\d+\w*(?:-\d+)?\s+", "", m.group("v"))):
        if _SUFFIX_WORD.fullmatch(w):
            break
        words.append(w)
    return bool(words) and not any(
        lexicon.fold(w) in _NEVER_NAME or lexicon.fold(w) in lexicon.CLINICAL or lexicon.fold(w) in _RHYTHM_WORDS
        for w in words
        if lexicon.fold(w) not in _US_STATES
    )


def _check_employer(m: re.Match[str]) -> bool:
    """An employer's name holds a capitalised word that is on no word list ("IBM", "Raytheon"), not "THE CITY"."""
    words = [w for w in _LEX_TOKEN.findall(m.group("v")) if w[0].isupper()]
    return any(not _vocab(w) and lexicon.fold(w) not in _US_STATES for w in words)


#: "6 BEAT RUN", "15 SEC RUN", "3 EPISODES ST": counts of a rhythm, not a street with a suffix.
_RHYTHM_WORDS = frozenset("beat beats sec secs second seconds min mins episode episodes epsiodes run runs".split())  # noqa: SIM905


_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|"
    "OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|"
    "Delaware|Florida|Georgia|Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|"
    "Massachusetts|Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|"
    "New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|Rhode Island|"
    "South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|West Virginia|Wisconsin|Wyoming"
)
_SUFFIXES = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|Circle|Cir|"
    r"Parkway|Pkwy|Highway|Hwy|Trail|Trl|Square|Sq|Loop|Pike|Row|Run|Path|Alley|Plaza|Crescent|Cres"
)
_SUFFIX_WORD = re.compile(_SUFFIXES, re.IGNORECASE)
_CAPWORD = r"(?:[A-Z][a-zA-Z'.-]*|\d+(?:st|nd|rd|th))"
_STREET = (
    r"\d{1,6}[A-Z]?(?:-\d+)?[ \t]+(?:[NSEW]\.?[ \t]+|North[ \t]+|South[ \t]+|East[ \t]+|West[ \t]+)?(?:"
    + _CAPWORD
    + r"[ \t]+){1,3}"
    r"(?:" + _SUFFIXES + r"|" + _SUFFIXES.upper() + r")\b\.?"
    r"(?:,?[ \t]*(?:Apt|Apartment|Suite|Ste|Unit|Rm|Room|Fl|Floor|#)\.?[ \t]*#?[ \t]*[\w-]+)?"
)
_CITY_ST_ZIP = r"[A-Z][a-zA-Z.'-]+(?:[ \t]+[A-Z][a-zA-Z.'-]+){0,2},?[ \t]+(?:" + _STATES + r")\.?(?:,?[ \t]+\d{5}(?:-\d{4})?)?"
#: Regions smaller than a state, which Safe Harbor removes like a town: a compass part or "upstate" of a state,
#: and named regions notes write ("FROM THE EASTERN SHORE", "summers on Cape Cod").
_REGION = re.compile(
    r"\b(?P<v>(?:(?:north|south|east|west)(?:ern)?|upstate|downstate|central)[ \t]+(?:"
    + "|".join(st.replace(" ", r"[ \t]+") for st in sorted(_STATES.split("|")) if len(st) > 2)
    + r"|NY|PA)|eastern[ \t]+shore|western[ \t]+shore|delmarva|cape[ \t]+cod|long[ \t]+island|upper[ \t]+peninsula|"
    r"outer[ \t]+banks|hudson[ \t]+valley|lehigh[ \t]+valley|central[ \t]+valley|finger[ \t]+lakes|"
    r"the[ \t]+berkshires|the[ \t]+poconos|the[ \t]+catskills|the[ \t]+adirondacks|tidewater|hampton[ \t]+roads|"
    r"jersey[ \t]+shore|twin[ \t]+cities|quad[ \t]+cities|inland[ \t]+empire|silicon[ \t]+valley|"
    r"florida[ \t]+keys|four[ \t]+corners|research[ \t]+triangle|low[ \t]*country|hill[ \t]+country|"
    r"(?:florida|texas|oklahoma)[ \t]+panhandle)\b",
    re.IGNORECASE,
)
ADDRESS_RULES = [
    Rule("LOCATION", _REGION, 0.8),
    Rule("ADDRESS", re.compile(r"(?<![\w-])(?P<v>" + _STREET + r"(?:,?\s+" + _CITY_ST_ZIP + r")?)(?![\w])"), 0.9,
         _street_words_ok),
    Rule("ADDRESS", re.compile(r"(?<![\w-])(?P<v>(?:P\.?\s?O\.?\s+Box|POB)\s+\d+)\b", re.IGNORECASE), 0.9),
    # A street line in any case after a word that says an address follows ("lives at 12 oak st apt 4b").
    Rule("ADDRESS", re.compile(r"\b(?:lives|living|resides|residing|address|addr|home|moved|staying)\s*(?:alone\s+)?"
                               r"(?:at|on|is|to)?\s*:?\s*(?P<v>\d{1,6}[a-z]?(?:-\d+)?[ \t]+(?:[nsew]\.?[ \t]+)?"
                               r"(?:[a-z][a-z'.-]*[ \t]+){1,3}(?:" + _SUFFIXES + r")\b\.?"
                               r"(?:,?[ \t]*(?:apt|apartment|suite|ste|unit|rm|room|fl|floor|#)\.?[ \t]*#?[ \t]*[\w-]+)?)",
                               re.IGNORECASE), 0.9, _street_words_ok),
    Rule("ADDRESS", re.compile(r"\b(?P<v>[A-Z][a-zA-Z.'-]+(?:\s+[A-Z][a-zA-Z.'-]+){0,2},\s+(?:" + _STATES
                               + r")\s+\d{5}(?:-\d{4})?)(?!\d)"), 0.9),
    # An employer after a word that names one ("CEO OF IBM", "works at Acme Tool"): where a person is found.
    Rule("LOCATION", re.compile(r"\b(?:works?|working|worked|employed|employee|retired|ceo|owner|president|manager|"
                                r"job)\s+(?:at|for|of|by|from|with)\s+(?:the\s+)?(?P<v>(?-i:[A-Z][A-Za-z&'-]*"
                                r"(?:[ \t](?!(?i:as|and|in|at|on|for|of|to|with|but|or|since|until|x|is|was|who|pt|s/p)\b)"
                                r"[A-Z][A-Za-z&'-]*){0,2}))(?![\w&])", re.IGNORECASE), 0.8, _check_employer),
    Rule("ZIP", re.compile(r"\b(?:zip|zip\s*code|postal\s+code)\s*:?\s*(?P<v>\d{5}(?:-\d{4})?)(?!\d)",
                           re.IGNORECASE), 0.9),
    Rule("ZIP", re.compile(r"\b(?:" + _STATES + r")\s+(?P<v>\d{5}(?:-\d{4})?)(?!\d)"), 0.8),
    Rule("LOCATION", re.compile(r"\b(?:lives|living|resides|residing|moved|from|born)\s+(?:in|at|to)\s+"
                                r"(?P<v>[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2})(?:,\s*(?:" + _STATES + r"))?\b"), 0.7),
    Rule("FACILITY", re.compile(r"(?P<v>\b(?:(?:St\.|Saint|Mt\.|Mount)[ ])?(?:[A-Z][a-zA-Z'&-]+[ ]){1,4}"
                                r"(?:Hospital|Medical[ ]Center|Health[ ]Center|Clinic|Health[ ]System|Healthcare|"
                                r"Infirmary|Nursing[ ]Home|Rehabilitation[ ]Center|Rehab[ ]Center|Care[ ]Center|"
                                r"Medical[ ]Group|Family[ ]Practice|Urgent[ ]Care|Hospice|Memorial)\b)"), 0.75),
]  # fmt: skip


def _check_date(m: re.Match[str]) -> bool:
    if m.re in (_FORMAT_RE["mdy"], _FORMAT_RE["my2"]) and _VENT_AFTER.match(m.string, m.end()):
        return False  # "PSV 10/5/50%": pressure support, PEEP and FiO2, not 5 Oct 1950
    return _to_date_from_match(m) is not None


def _to_date_from_match(m: re.Match[str]) -> ParsedDate | None:
    for fmt, rx in _DATE_FORMATS:
        if rx is m.re:
            return _to_date(fmt, m)
    return None


#: Words right before ``a/b`` that make it a score, a ratio or a setting, not a month and day.
_NOT_DATE_BEFORE = re.compile(
    r"(?:\b(?:bp|b/p|sbp|dbp|abp|nbp|nibp|art|a-line|map|pap|pas|pa|cvp|wedge|cpap|bipap|peep|ps|psv|vent|simv|imv|"
    r"i:e|ie|ratio|pressures?|settings?|strength|strengths|motor|power|pain|grade|murmur|score|gcs|apgar|rass|"
    r"tab|tabs|ns|x|mae|ue|le|bue|ble|rue|lue|rle|lle|extremities|grips?|hand\s*grasps?|ratio|"
    r"approx|approximately|about|abt|q|every|each)"
    r"\s*[:=]?\s*(?:(?:is|was|now|at|to|from|of|on|@|~|>|<)\s*)?$)",
    re.IGNORECASE,
)
#: Words right after ``a/b`` that make it a score, a fraction or a dose.
_NOT_DATE_AFTER = re.compile(
    r"\s*(?:pain|strength|murmur|sem|hsm|systolic|diastolic|holosystolic|tab|tabs|tablets?|pills?|caps?|"
    r"capsules?|of|scale|score|power|reflex|x|ns|nss|normal|strength|mmhg|mm|cm|cmh2o|peep|ps|ratio|bilat|"
    r"bilaterally|b/l|throughout|in\s+(?:all|both|upper|lower|ue|le|bue|ble|arms|legs)|ue|le|bue|ble|rue|lue|rle|"
    r"lle|extremities|grips?|hand|amp|amps|units?|u|mg|mcg|ml|cc|l|liters?|strength|str|cup|dose|teaspoons?|tsp)\b",
    re.IGNORECASE,
)
#: Strict date words for the shapes that are mostly ranges or decimals otherwise (``7-8``, ``7.22``).
_DATE_STRICT = re.compile(
    r"\b(?:on|since|dated?|dos|dob|born|admitted|admit|discharged?|until|till|returned|seen|last|next|"
    r"f/u|appt|scheduled|surgery|date)\s*[:,(]?\s*$",
    re.IGNORECASE,
)
_DATE_FROM_TO = re.compile(
    r"\b(?:from|to|through|thru|before|after|started|stopped|drawn|done|visit|effective|starting)\s*[:,(]?\s*$",
    re.IGNORECASE,
)
_STRENGTH_WORDS = re.compile(
    r"\b(?:strength|motor|mae|grips?|grasps?|extremit\w*|moves|power|push|pull|[rlb]?ue|[rlb]?le)\b", re.IGNORECASE
)
_PAIN_WORDS = re.compile(r"\b(?:pain|discomfort|ha|headache|scale|rates?|rating|level|sore|ache|score)\b", re.IGNORECASE)
_FRACTIONS = frozenset({(1, 2), (1, 3), (2, 3), (1, 4), (3, 4), (1, 8)})


#: Ventilator settings written as pairs: "PSV 10/5", "flowby 6/2", "5/5 PSV/CPAP", "5/40%". Such a pair is
#: no date even after a date word ("remained on 5/5"), since "on" is how settings are written.
_VENT_BEFORE = re.compile(
    r"\b(?:psv?|ips|cpap|bipap|peep|flow-?by|simv|imv|prvc|settings?|cpap/ps|ps/cpap|"
    r"cpap/psv|psv/cpap|fio2)\b[^\n/.;]{0,20}$",
    re.IGNORECASE,
)
_VENT_AFTER = re.compile(
    r"(?:/\d{1,3})?[ \t]*%|[ \t)]*(?:psv?|ips|cpap|bipap|peep|fio2|c[ \t]+\d\d[ \t]*%)\b",
    re.IGNORECASE,
)
#: Date words that no ventilator setting follows ("vent since 7/22").
_DATE_SINCE = re.compile(
    r"\b(?:since|until|till|dated?|from|admitted|discharged?|started|stopped|placed|inserted|intubated|extubated|"
    r"trached|changed|replaced|removed)\s*[:,(]?\s*$",
    re.IGNORECASE,
)
#: Pain named after the pair ("5/10 incisional pain", "CP 4/10", "10/10 angina") as well as before it.
_PAIN_NEAR = re.compile(r"\b(?:pain|cp|angina|c/o|discomfort|ha|headache|incisional|scale)\b", re.IGNORECASE)
#: A range or a decimal before a unit or a count is no date ("1-2 DAYS", "4-5 L NC", "7.5 peep").
_UNIT_AFTER = re.compile(
    r"[ \t]*(?:days?|hours?|hrs?|weeks?|wks?|months?|times|x|pillows?|l|lpm|liters?|mg|mcg|meq|units?|cc|ml|"
    r"peep|ps|psv|cm|mm|kg|lbs?|%|lopressor|metoprolol|bid|tid|qd|q\d+h?)\b",
    re.IGNORECASE,
)


def _check_md(m: re.Match[str]) -> bool:
    """``a/b`` without a year is a date anywhere, unless it is a clinical score or ratio.

    Exceptions, each explicit: motor strength ``0-5/5``, pain ``0-10/10``, fractions (``1/2 tab``),
    murmur grades and doses by the word after, ventilator settings by the word before (``PS 10/5``;
    ``BP 120/80`` is no date anyway: 120 is no month). Only a pair whose second part is at most 10 can
    be such a score, so ``7/22 pain`` stays a date. A date word before (``on 4/10``) wins.
    """
    if _to_date_from_match(m) is None:  # a day the month does not have ("2/31") is still a date: [DATE]
        return 1 <= int(m.group("m")) <= 12 and 29 <= int(m.group("d")) <= 31
    before = m.string[max(0, m.start() - 25) : m.start()]
    line_before = before.rsplit("\n", 1)[-1]
    if _VENT_AFTER.match(m.string, m.end()) or (_VENT_BEFORE.search(line_before) and not _DATE_SINCE.search(before)):
        return False
    pair = (int(m.group("m")), int(m.group("d")))
    if pair in _FRACTIONS and _NOT_DATE_AFTER.match(m.string, m.end()):
        return False  # "changed to 1/2 NS": a fraction before a dose word, even after "to"
    if _DATE_STRICT.search(before) or _DATE_FROM_TO.search(before):
        return True
    if m.group("m").startswith("0") or m.group("d").startswith("0"):
        return True  # "02/03": no score or fraction is written with a leading zero
    mm, dd = int(m.group("m")), int(m.group("d"))
    # Scores, grades, fractions and settings have a small second part (/2 ... /10): only those can be one.
    score_like = dd <= 10 and mm <= max(dd, 6)
    if (score_like and _NOT_DATE_AFTER.match(m.string, m.end())) or (dd <= 10 and _NOT_DATE_BEFORE.search(before)):
        return False
    if (mm, dd) in _FRACTIONS or (mm, dd) == (5, 5):
        return False
    line = before.rsplit("\n", 1)[-1]
    if dd == 5 and mm <= 5 and _STRENGTH_WORDS.search(line):
        return False
    after = m.string[m.end() : m.end() + 30].split("\n", 1)[0]
    return not (dd == 10 and mm <= 10 and (_PAIN_WORDS.search(line) or _PAIN_NEAR.search(line[-12:] + " " + after)))


def _check_md_spaced(m: re.Match[str]) -> bool:
    """``7 / 22`` is a date as ``7/22`` is, unless it is one link of a chain of slashes (a gas, a setting)."""
    before = m.string[max(0, m.start() - 8) : m.start()]
    if re.search(r"\d[ \t]*/[ \t]*-?$", before) or re.match(r"[ \t]*/", m.string[m.end() :]):
        return False
    return _check_md(m)


def _check_month_year(m: re.Match[str]) -> bool:
    """``7-2099`` is a month and year, but ``1-2000 ml`` is a range before a unit."""
    return _to_date_from_match(m) is not None and not _UNIT_AFTER.match(m.string, m.end())


def _check_strict(m: re.Match[str]) -> bool:
    """``7-8`` and ``7.22`` are dates only after a date word (``on 7-8``): otherwise ranges and decimals."""
    if _to_date_from_match(m) is None or _UNIT_AFTER.match(m.string, m.end()):
        return False
    mm, dd = m.group("m"), m.group("d")
    if len(mm) == len(dd) == 2 and (mm.startswith("0") or (dd.startswith("0") and m.re is _FORMAT_RE["md_dash"])):
        return True  # "07-22", "07.22", "12-03": no range or decimal is written so ("5.06" is a decimal)
    return _DATE_STRICT.search(m.string[max(0, m.start() - 25) : m.start()]) is not None


def _check_month(m: re.Match[str]) -> bool:
    """A month name alone: full names always, abbreviations after ``in``/``since``/``of``/``early``... only."""
    word = m.group("mon").rstrip(".")
    if len(word) > 4 or word.casefold() == "june" or word.casefold() == "july":
        return True
    before = m.string[max(0, m.start() - 12) : m.start()]
    return re.search(r"\b(?:in|since|of|during|early|late|mid|end|until|by|last|next|this)\s+$", before, re.I) is not None


_GLUED_NEED = re.compile(r"\d/\d{1,2}/\d{1,2}/\d")
_GLUED_MD = r"(?P<{}>(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01]))"


def _check_glued(m: re.Match[str]) -> bool:
    """Two glued month/day pairs are dates unless either is a fraction or a score, or a ratio word precedes."""
    pairs = [tuple(int(x) for x in m.group(k).split("/")) for k in ("v", "w")]
    if any(p in _FRACTIONS or p == (5, 5) for p in pairs):
        return False
    return _NOT_DATE_BEFORE.search(m.string[max(0, m.start() - 25) : m.start()]) is None


def _check_my2_name(m: re.Match[str]) -> bool:
    """``OCT 93`` is a date; ``MAY 90`` is too often "may be 90" in ALL-CAPS notes to count."""
    return m.group("mon").casefold() != "may" and _check_date(m)


_CHECKS: dict[str, Callable[[re.Match[str]], bool]] = {
    "md": _check_md, "md_sp": _check_md_spaced, "my": _check_month_year,
    "mdy_dot": _check_md, "my2_name": _check_my2_name, "md_dash": _check_strict,
    "md_dot": _check_strict, "mon": _check_month,
}  # fmt: skip
#: Cheap patterns a text must hold for a rare date shape's regex to run at all (speed only, never recall).
_NEEDS = {
    "mdy_dot": re.compile(r"/\d{1,2}\.\d"), "dmon": re.compile(r"\d-[A-Za-z]"), "md_sp": re.compile(r"\d[ \t]+/|/[ \t]+\d"),
    "dmon_glued": re.compile(r"\d[A-Za-z]"),
}  # fmt: skip
#: Holidays that fall on one day of a year, as notes write them ("home for Christmas", "OVER THANKSGIVING").
_HOLIDAY = re.compile(
    r"\b(?:(?:christmas|xmas|new[ \t]+year['’]?s|halloween|hanukkah|chanukah|kwanzaa)(?:[ \t]+(?:eve|day))?|"
    r"thanksgiving(?:[ \t]+day)?|easter(?:[ \t]+(?:sunday|monday))?|good[ \t]+friday|black[ \t]+friday|"
    r"(?:valentine|st\.?[ \t]*patrick|mother|father|memorial|labou?r|columbus|veterans?|presidents?|independence|"
    r"martin[ \t]+luther[ \t]+king(?:[ \t]+jr\.?)?|mlk)['’]?s?[ \t]+day|yom[ \t]+kippur|rosh[ \t]+hashan+ah|"
    r"passover|fourth[ \t]+of[ \t]+july|july[ \t]+4th)\b",
    re.IGNORECASE,
)
DATE_RULES = [
    *(Rule(DATE, rx, 0.85 if fmt in _CHECKS else 0.95, _CHECKS.get(fmt, _check_date), _NEEDS.get(fmt))
      for fmt, rx in _DATE_FORMATS),
    # Two month/day dates glued by a slash ("TREATMENTS 10/03/10/04"): each is a date.
    *(Rule(DATE, re.compile(r"(?<![\w/.])" + a + "/" + b + r"(?![\w/]|\.\d)"), 0.85, _check_glued, _GLUED_NEED)
      for a, b in ((_GLUED_MD.format("v"), _GLUED_MD.format("w")), (_GLUED_MD.format("w"), _GLUED_MD.format("v")))),
    # A holiday names its day (Safe Harbor: every date element but the year): written as [DATE].
    Rule(DATE, _HOLIDAY, 0.85),
    # An ordinal from 10th to 31st is a day of a month anywhere ("ADMITTED 22nd FROM OSH", "ekg THE 22ND
    # unchanged"): counts that high are rare in notes; a floor, a percentile or a count noun after it is none.
    Rule(DATE, re.compile(r"(?<![\w/.-])(?P<v>(?:1\d|2\d|3[01])(?:st|nd|rd|th))\b(?![ \t]*(?:percentile|%|floor|fl\b|"
                          r"times?|doses?|units?|days?|weeks?|wks?|hours?|hrs?|attempts?|birthday|anniversary|grade|"
                          r"ribs?|ics|intercostal|cycles?|round|gen(?:eration)?|century|street|st\b|ave))", re.IGNORECASE), 0.85),
    # A day alone by its ordinal ("it's the 11th.", "on the 3rd"): written as [DATE].
    Rule(DATE, re.compile(r"\b(?:the|on|since|until|by)\s+(?P<v>[0-3]?\d(?:st|nd|rd|th))\b"
                          r"(?=\s*(?:[.,;:)!?\n]|$|\s(?:and|at|to|or|when|for|from|with|in|per|until|thru|through|after|before|"
                          r"pt|she|he|we|they|but|so|then|which|as|@)\b|\s-))", re.IGNORECASE), 0.85),
]  # fmt: skip


# --- names found by context ---------------------------------------------------------------------------
_NAME_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’-]*\.?|[A-Z]\.")
_CRED = (
    r"(?:M\.?D\.?|D\.?O\.|DO|R\.?N\.?|N\.?P\.?|PA-C|PA|Ph\.?D\.?|DDS|DMD|FNP-BC|FNP|APRN|MBBS|CNM|LPN|PharmD|"
    r"DPM|LCSW|LICSW|CRNA|FACC|FACS|FACP|MSN|BSN|RPh|CNA|MA|OD|RRT|CRT|CCRN|RNC|RNCM|MSW|PT|OT|SLP|RD)"
)
_NAME_PREFIX = re.compile(
    r"(?:\b(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Mx|Prof)\.?[ \t]+"
    r"|\b(?:patient(?:[ \t]+name)?|pt(?:[ \t]+name)?|name|re|attending(?:[ \t]+physician)?|referring(?:[ \t]+"
    r"(?:physician|provider|doctor))?|pcp|primary\s+care(?:\s+(?:physician|provider))?|provider|physician|surgeon|"
    r"resident|fellow|nurse|rn|cc|emergency\s+contact|contact|guardian|proxy|hcp|np|pa|author|signed|"
    r"radiologist|interpreted\s+by|to|from)[ \t]*:[ \t]*"
    r"|\b(?:signed|e-?signed|dictated|transcribed|seen|referred|evaluated|examined|reviewed|accompanied|"
    r"cosigned|co-signed|authenticated|interpreted|read|performed|verified|approved|consented|visited)[ \t]+by[ \t]+"
    r"|\b(?:discussed[ \t]+(?:with|w/)|spoke[ \t]+(?:with|to)|spoke[ \t]*w/|talked[ \t]+(?:with|to)|talked[ \t]*w/|"
    r"met[ \t]+with|d/w|seen[ \t]+with|care[ \t]+of|family[ \t]*\([ \t]*|"
    r"(?:message|msg|vm|voicemail)[ \t]+left[ \t]+(?:for|with)|"
    r"left[ \t]+(?:a[ \t]+)?(?:message|msg|vm|voicemail)[ \t]+(?:for|with)|updates?[ \t]+given[ \t]+to|"
    r"(?:called|paged|notified|informed|updated)(?=[ \t]+(?!(?:late|early|back|out|in|at|for|to|by|and|with|"
    r"again|twice|times?|today|tonight|this|that|the|a|an|on|off|over|up|down|about|re|x\d*)\b)[A-Za-z]{2}))[ \t]*"
    r"(?:(?:Dr|Mr|Mrs|Ms)\.?[ \t]+)?"
    r"|\b(?:dear)[ \t]+(?:(?:Dr|Mr|Mrs|Ms)\.?[ \t]+)?"
    r"|\b(?:sincerely|regards|respectfully|thank\s+you|best)[ \t]*,[ \t]*\n?[ \t]*)",
    re.IGNORECASE,
)
_RELATION = re.compile(
    r"\b(?:(?:step|ex|god)[ \t-]*)?(?:wife|husband|son|daughter|mother|father|sister|brother|spouse|partner|"
    r"fianc[eé]e?|friend|caregiver|niece|nephew|grandson|granddaughter|grandchild|grandmother|grandfather|aunt|uncle|"
    r"neighbor|roommate|boyfriend|girlfriend|significant[ \t]+other)" + _IN_LAW
    + r"[ \t]*,?[ \t]+(?:named[ \t]+)?",
    re.IGNORECASE,
)
# A name right before a birth date or record number ("Ivy Baker | DOB ...", "Smith, John (MRN ...)"), or
# opening a sentence that gives an age ("Skip Black is a 50-year-old man").
_BEFORE_ID = re.compile(
    r"[ \t]*[|,(;:-]?[ \t]*(?:DOB|D\.O\.B\.?|date[ \t]+of[ \t]+birth|born|MRN|MR#|med(?:ical)?[ \t]+rec)\b",
    re.IGNORECASE,
)
_BEFORE_AGE = re.compile(
    r"[ \t]+(?:is|was)[ \t]+an?[ \t]+\d{1,3}[ \t]*(?:-|[ \t])?[ \t]*"
    r"(?:years?|yrs?|yo\b|y/o|y\.o\.|months?|weeks?|days?)",
    re.IGNORECASE,
)
#: Credentials that are also common note words ("PT" is mostly the patient): a name before one must be no word.
_AMBIGUOUS_CRED = frozenset({"PT", "OT", "MA", "OD", "DO", "PA", "RD", "SLP"})
_CRED_AFTER = re.compile(r",?[ \t]*(?<![\w.])" + _CRED + r"(?![\w])")
_CRED_AFTER_CI = re.compile(
    r",?[ \t]*(?<![\w.])(?:md|m\.d\.|rn|np|phd|pa-c|dds|aprn|fnp|rrt|crt|licsw|lcsw|msw|rncm)(?![\w])", re.IGNORECASE
)


def _is_name_word(tok: str, require_cap: bool) -> bool:
    """A capitalised common word (``Will``, ``May``, ``Hope``) may be a name; a lowercase one may not."""
    core = tok.rstrip(".").strip("'’-").casefold()
    if core.endswith(("'s", "’s")):
        core = core[:-2]
    if not core or core in HARD_STOP or core in _RELATIONS or (core in ALLOW_LIST and len(core) > 1):
        return False
    if tok[0].isupper():
        return True
    return not require_cap and core not in _STOP


# Between two words of a name: one space, or ", " before a first name that ends the field (``Smith, John``).
_NAME_GAP = re.compile(
    r"[ \t](?=\S)|,[ \t]?(?=(?:[A-Z][a-z]+|[A-Z]{2,})(?:[ \t][A-Z]\.)?(?:$|\n|[,;)(|]|[ \t]{2,}|[ \t]*$))", re.M
)


def scan_name_forward(text: str, pos: int, require_cap: bool, max_tokens: int = 3, labelled: bool = False) -> int:
    """End of a name that starts at ``pos`` (``pos`` itself if there is none).

    After a capitalised first word only capitalised words follow (``Dr. Smith recommended`` stops at
    Smith); after a lowercase one only lowercase non-stop words (``dr. brown said`` stops at brown).
    After a label with a colon (``pt: will ramirez``) a lowercase first word may be a common word.
    """
    end = pos
    count = 0
    i = pos
    cap = require_cap
    while count < max_tokens:
        m = _NAME_TOKEN.match(text, i)
        lenient = labelled and count == 0 and m is not None and _is_name_word(m.group().capitalize(), cap)
        if not m or not (lenient or _is_name_word(m.group(), cap)):
            break
        if count and not cap and m.group()[0].isupper():  # lowercase name, then a capital: another field
            break
        tok = m.group()
        if count == 0:
            cap = tok[0].isupper()
        sentence_end = tok.endswith(".") and len(tok) > 2
        end = m.end() - 1 if sentence_end else m.end()
        count += 1
        if sentence_end or count >= max_tokens:
            break
        nxt = _NAME_GAP.match(text, end)
        if not nxt or ("," in nxt.group() and count > 1):
            break
        i = nxt.end()
    return end


def scan_name_backward(text: str, end: int, require_cap: bool, max_tokens: int = 3) -> int:
    """Start of a name that ends at ``end`` (before a credential)."""
    start = end
    words = list(re.finditer(r"[A-Za-z][A-Za-z'’-]*\.?", text[max(0, end - 80) : end]))
    offset = max(0, end - 80)
    cursor = end
    for taken, m in enumerate(reversed(words)):
        gap = text[offset + m.end() : cursor]
        if gap.strip(" \t") or (taken and "\n" in gap):
            break
        if not _is_name_word(m.group(), require_cap):
            break
        start = offset + m.start()
        cursor = start
        if taken + 1 >= max_tokens:
            break
    return start


def _could_be_name(span: str) -> bool:
    """A span found by context holds a census name or a word on no list (``c/o pain`` does not: complains of)."""
    return any(_name_kind(w) in ("strong", "maybe", "unknown") for w in _LEX_TOKEN.findall(span))


def _mixed_case(text: str, pos: int) -> bool:
    """The word at ``pos`` is capitalised and its line has lower-case letters (so capitals carry meaning)."""
    line = text[text.rfind("\n", 0, pos) + 1 : (text.find("\n", pos) + 1 or len(text) + 1) - 1]
    return text[pos : pos + 1].isupper() and any(c.islower() for c in line) and not text[pos : pos + 2].isupper()


def _name_prefix_end(text: str, start: int, end: int) -> int:
    """End of the leading run of name-like words (census names, unknown words, initials) in ``text[start:end]``."""
    last = start
    for m in _LEX_TOKEN.finditer(text, start, end):
        if text[last : m.start()].strip(" \t.,'’-"):
            break
        if not (_name_kind(m.group()) in ("strong", "maybe", "unknown") or len(m.group()) == 1):
            break
        if last == start and lexicon.fold(m.group()) in _ROLE_WORDS and _name_kind(m.group()) != "strong":
            break  # "SPOKE WITH HOUSE STAFF", "d/w CASE MANAGER": a role, not a name (but "d/w DORIS DAY" is one)
        last = m.end()
    while last > start and text[last - 1] in " \t":
        last -= 1
    return last


class ContextNameRecognizer(LocalRecognizer):
    """Names after a title or a label (``Dr. x``, ``Patient: x``, ``signed by x``) and before a credential.

    Matching is case-insensitive, so ``dr. brown`` and ``patient: john smith`` are found, which the NER
    model misses; after relation words (``wife Mary``) a capital is required.
    """

    def __init__(self) -> None:
        self.label = "ContextNameRecognizer"
        super().__init__(supported_entities=[PERSON], name=self.label, supported_language="en")

    def load(self) -> None:
        """Nothing to load."""

    def analyze(self, text: str, entities: list[str] | None, nlp_artifacts: Any = None) -> list[RecognizerResult]:
        """Find names by the words around them."""
        spans: list[tuple[int, int, float]] = []
        for rx, cap in ((_NAME_PREFIX, False), (_RELATION, True)):
            for m in rx.finditer(text):
                end = scan_name_forward(text, m.end(), require_cap=cap, labelled=":" in m.group())
                labelled_pair = ":" in m.group() and "," in text[m.end() : end]  # "RE: HUNTER, WILL"
                if end > m.end() and not labelled_pair and not _mixed_case(text, m.end()):
                    # lower-case or ALL-CAPS text after a phrase ("d/w FAMILY REGARDING"): only name-like words;
                    # after a label with a colon ("RE: HUNTER, WILL") the field is the name
                    end = _name_prefix_end(text, m.end(), end)
                words = _LEX_TOKEN.findall(text, m.end(), end)
                if (
                    rx is _RELATION
                    and words
                    and not _mixed_case(text, m.end())
                    and _name_kind(words[0]) == "maybe"
                    and _verb_after_relation(lexicon.fold(words[0]))
                ):
                    continue  # "WIFE WORKS IN", "SON BROUGHT HIM": a verb, as the word-list rule reads it
                if (
                    rx is _NAME_PREFIX
                    and words
                    and not _TITLE_CUE.search(m.group())
                    and all(lexicon.fold(w) in lexicon.CLINICAL or lexicon.fold(w) in ALLOW_LIST for w in words)
                ):
                    continue  # "examined by Neuro": a clinical word after a phrase; not after "Dr." or "brother"
                if (
                    rx is _NAME_PREFIX
                    and re.fullmatch(r"re[ \t]*:[ \t]*", m.group(), re.IGNORECASE)
                    and not labelled_pair
                    and not any(_name_kind(w) in ("strong", "unknown") for w in words)
                    and not all(_style(w) == "T" for w in words)
                ):
                    continue  # "RE:OVERALL PX": "re:" is mostly "regarding" in notes; a name field holds a name
                if end > m.end():
                    spans.append((m.end(), end, 0.9))
        for rx, cap in ((_CRED_AFTER, False), (_CRED_AFTER_CI, False), (_BEFORE_ID, True), (_BEFORE_AGE, True)):
            for m in rx.finditer(text):
                start = scan_name_backward(text, m.start(), require_cap=cap)
                words_before = text[start : m.start()].split()
                if words_before and lexicon.fold(words_before[-1]) in _ROLE_WORDS:
                    continue  # "SKIN CARE RN", "charge RN": a role before the credential, not a name
                if m.group().strip(" \t,.").upper() in _AMBIGUOUS_CRED and not any(
                    _name_kind(w) in ("strong", "unknown") or (_name_kind(w) == "maybe" and _style(w) == "T")
                    for w in _LEX_TOKEN.findall(text, start, m.start())
                ):
                    continue  # "OVERALL, PT APPROX", "FOCUS ON GETTING PT ON": PT is the patient there ("Baker, PT" is one)
                if (
                    start < m.start()
                    and (
                        (cap and _mixed_case(text, start))  # "Skip Johnson | DOB", "Skip Black is a 50-year-old"
                        or (
                            _could_be_name(text[start : m.start()])
                            and _name_prefix_end(text, start, m.start()) == len(text[: m.start()].rstrip())
                        )
                    )
                ):
                    spans.append((start, m.start(), 0.9))
        return [
            RecognizerResult(
                entity_type=PERSON,
                start=s,
                end=e,
                score=sc,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: self.label,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                },
            )
            for s, e, sc in spans
        ]


# ---------------------------------------------------------------------------------------------------
# Names and places by word lists, in any letter case (lexicon.py)
# ---------------------------------------------------------------------------------------------------

#: A word, hyphenated parts together ("Stord-Painter"), except a relation glued to what follows by a dash
#: ("nephew-Therese", "DTR-ANN" are two words; "son-in-law" stays one).
_LEX_TOKEN = re.compile(
    r"\b(?i:wife|husband|son|daughter|dtr|mother|mom|father|dad|sister|brother|niece|nephew|grandson|granddaughter|"
    r"friend|cousin|aunt|uncle|spouse|partner)(?=-[A-Za-z]{3,}\b(?!-))|[A-Za-z][A-Za-z'’]*(?:-[A-Za-z]+)*"
)
#: Words after which the next census-name or unknown word is a person, in any case: relations and roles.
_LEX_CUE = re.compile(
    r"(?:(?:\b(?:dr|drs|doctor|mr|mrs|ms|miss|np|rn|md|rrt|crt|sw|lcsw|licsw|rncm|nurse|caseworker|chaplain|"
    r"attending|resident|fellow|intern|pcp|hcp|dtr|bro|sis)\b\.?|"
    r"\b(?:wife|husband|son|sons|daughter|daughters|mother|mom|"  # a full word's period ends its sentence ("son. Found")
    r"father|dad|sister|sisters|brother|brothers|spouse|partner|fianc[eé]e?|friend|caregiver|niece|"
    r"nephew|grandson|granddaughter|grandaughter|grand\s+daughter|grand\s+son|grandmother|grandfather|aunt|uncle|"
    r"neighbor|roommate|boyfriend|girlfriend|cousin|guardian|named|grandchild|significant[ \t]+other)\b"
    + _IN_LAW + r")"
    r"[ \t]*(?:[,:-]+[ \t]*)?(?:\(\w+\)[ \t]*)?$)",
    re.IGNORECASE,
)
#: After a title, any capitalised word is a name (``Dr. Foley``).
_TITLE_CUE = re.compile(r"\b(?:Dr|Drs|Doctor|Mr|Mrs|Ms|Miss|Mx|Prof|dr|drs|mr|mrs|ms)\b\.?[ \t]*$")  # not "mild MR."
#: A relation written after the name: ``Hank Przybylo (son)``, ``Nancy Cetrone his neice``, ``bill, pt's son``.
_RELATION_AFTER = re.compile(
    r"(?:[ \t]*\((?:son|daughter|dtr|wife|husband|sister|brother|mother|father|niece|nephew|neice|friend|"
    r"proxy|hcp|grandson|granddaughter|grandaughter|spouse|partner)\)|,?[ \t]+(?:his|her|pt'?s|patient'?s|the\s+pt'?s)"
    r"[ \t]+(?:son|daughter|dtr|wife|husband|sister|brother|mother|father|niece|nephew|neice|friend|proxy|hcp|"
    r"grandson|granddaughter|grandaughter|spouse|partner)\b)",
    re.IGNORECASE,
)
#: A credential right after a word makes it a name, in any case ("noone md", "LANDER RRT").
_CRED_NEXT = re.compile(
    r",?[ \t]+(?:md|m\.d\.|rn|np|rrt|crt|pa-c|licsw|lcsw|msw|rncm|ccrn|do|phd|pharmd)\b\.?(?![\w/-])", re.IGNORECASE
)
#: After "dr" any word but a verb or a place word is a name ("dr noone", "dr small").
_DR_CUE = re.compile(r"\b(?:dr|drs|doctor)\b\.?[ \t]*$", re.IGNORECASE)
_NOT_AFTER_DR = re.compile(
    r"\w+(?:ed|ing|ly)|aware|here|there|notified|note|notes|order|orders|office|team|service|on|off|said|says|states|"
    r"wants|will|would|to|at|in|re|and|or|who|also|now|today|tonight|called|paged|present|home|still|update|phone|"
    r"bedside|upset|supportive|involved|concerned|asks|agrees|feels|requests|visits|calls|arrives|leaves|left|came|"
    r"went|is|was|are|were|has|had|does|did|may|might|can|could|should|must|very|too|again|first|last|next|both"
)
#: Not a name after "dr" although not a verb: roles, times and clinical nouns ("dr rounds", "dr team").
_NOT_NAME_AFTER_DR = frozenset(
    """
    ok okd notif rounds round visit for about with by team covering call oncall saw see sees wrote gave feels
    thinks plans plan md np pa rn nurse resident fellow intern attending night day evening am pm pt patient
    family office note aware order orders unit service consult not now here there this that pts
    """.split()  # noqa: SIM905
)
#: Words that name a role before a credential or a relation ("skin care RN", "charge RN", "decision maker (son)").
_ROLE_WORDS = frozenset(
    """
    care charge staff house floor night day float skin wound team primary unit nurse case triage resource bedside
    admitting covering evening maker contact proxy health social resp respiratory travel agency float pool
    """.split()  # noqa: SIM905
)
#: Verbs that follow a relation word ("husband went", "daughter brought"): census names too, never one there.
_NOT_AFTER_RELATION = re.compile(
    _NOT_AFTER_DR.pattern + r"|brought|took|stayed|left|gave|told|asked|spent|signed|knows|needs|wants|feels|"
    r"thinks|understands|agrees|says|took|drove|brings|gets|got|lives|works|worked|plans|spoke|sat|stays|ate|"
    r"near|nearby|into|onto|about|over|under|out|up|down|back|all|goes|comes|takes|makes|keeps|helps|cares|drives|sees|"
    r"remains|continues|expresses|reports|denies|verbalizes|voices|prefers|declines|refuses|holds|sleeps|speaks|talks|"
    r"answers|returns|manages|handles"
)
def _relation_after(text: str, m: re.Match[str], kind: str) -> bool:
    """A relation written after the word: ``GREEN (DAUGHTER)`` makes any census name a name; the looser
    ``bill, pt's son`` only a first name or a word on no list (not "If necessary, pt's dtr")."""
    after = _RELATION_AFTER.match(text, m.end())
    if after is None:
        return False
    if after.group().lstrip(" \t").startswith("("):
        return True
    return kind == "unknown" or lexicon.fold(m.group()) in lexicon.FIRST


#: The verb shape alone (``-ed``, ``-ing``, ``-ly``), which census first names share ("TED", "holly", "Beverly").
_VERB_SHAPE = re.compile(r"\w+(?:ed|ing|ly)")


def _verb_after_relation(word: str) -> bool:
    """A verb after a relation word ("husband worried"); a first name of the verb's shape is a name there
    ("sister holly", "daughter, ted"), save ``spring``."""
    if word in lexicon.FIRST and word != "spring" and _VERB_SHAPE.fullmatch(word):
        return False
    return _NOT_AFTER_RELATION.fullmatch(word) is not None


#: A person from a service ("Rita from case management aware", "ANN FROM SW CALLED").
_FROM_SERVICE = re.compile(
    r"[ \t]+from[ \t]+(?:the[ \t]+)?(?:case[ \t]*manage?ment|cm|social[ \t]*work|sw|pt|ot|physical[ \t]+therapy|"
    r"occupational[ \t]+therapy|pharmacy|nutrition|dietary|admitting|hospice|vna|home[ \t]+care|rehab|pastoral[ \t]+care|"
    r"chaplaincy|ethics|palliative(?:[ \t]+care)?|transplant|renal|cardiology|neurology|surgery|anesthesia|"
    r"blood[ \t]+bank|lab|radiology|ir|ep|patient[ \t]+relations|security|interpret\w*|billing|insurance)\b",
    re.IGNORECASE,
)
#: An initial with its period right before a word: "D. Phyl", "j. o'brien" (not "d/c'd. re'd").
_INITIAL_BEFORE = re.compile(r"(?:^|(?<=[\s(]))[A-Za-z]\.[ \t]?$")
#: Words that say which family or what about it, not whose ("LOSS FAMILY MEETING", "CLOSE FAMILY").
_FAMILY_KIND = frozenset(
    """
    loss support history hx meeting teaching member members conference dynamics care planning grief bereavement
    medical nuclear close large young extended immediate whole entire own foster host new good supportive loving
    concerned big small blended adoptive birth step
    """.split()  # noqa: SIM905
)
#: A capital initial and its period, one space before the word, not "I & O.", "2 L." nor "L. Vent": "J. Long".
_CAP_INITIAL_BEFORE = re.compile(r"(?:^|(?<=[ \t(]))(?<![&\d][ \t])[AC-KM-QS-Z]\. $")  # not L./R./B.: a side
#: "family" after a surname written as a name (capitalised): "KEEP ROMERO FAMILY".
_FAMILY_NEXT = re.compile(r"[ \t]+famil(?:y|ies)\b", re.IGNORECASE)
#: A first name (or a word on no list) before a reporting verb is a person ("bill called", "LUCY IS ON VACA").
_REPORTS = re.compile(
    r"[ \t]*,?[ \t]*(?:called|calls|phoned|visited|visits|updated|aware|came|spoke|stated|states|"
    r"was\s+(?:in|here|updated|called|notified)|in\s+to\s+visit|at\s+bedside|notified|paged|is\s+on\s+vac\w*)\b",
    re.IGNORECASE,
)
#: A surname before these nouns is an eponym, not a person ("Fleischner criteria", "Foley catheter").
_EPONYM_NEXT = re.compile(
    r"(?:['’]s)?[ \t]+(?:criteria|catheter|cath|sign|syndrome|disease|score|scale|test|maneuver|manoeuvre|procedure|"
    r"classification|fracture|reflex|operation|repair|shunt|tube|valve|stocking|stockings|position|ulcer|filter|"
    r"needle|drain|bag|mask|tree|formula|equation|rule|rules|protocol|method|type|stage|grade|phenomenon|study|"
    r"studies|transplant|precautions|hugger|pump|boots?|mattress|respirations?|breathing|tear|line|port)\b",
    re.IGNORECASE,
)
_DETERMINER = re.compile(r"\b(?:the|a|an|this|that|his|her|your|my|our|their|per|of|no|any)\s+$", re.IGNORECASE)
#: Weaker cues: only a word on no list (not a census name that is also a word) becomes a name after them.
_LEX_WEAK_CUE = re.compile(
    r"(?:\b(?:per|contacts?|contacted|paged|notified|proxy|staff|called|with|w/|by|and|&)\b\.?[ \t]*(?:[,:-]+[ \t]*)?$)",
    re.IGNORECASE,
)
#: Words that name a kind of facility: the words before one are its name (``CALVERT HOSPITAL``).
_FACILITY_NOUN = re.compile(
    r"\b(?:hosp(?:ital|itals|iatal)?|rehab(?:ilitation)?|medical\s+(?:center|ctr)|med\.?\s+(?:center|ctr)|"
    r"regional|memorial|nursing\s+(?:home|facility|center)|house|shelter|clinic|infirmary|hospice|"
    r"health\s+(?:center|system)|care\s+center|center|ctr|institute|university|college|healthcare|facility|"
    r"adventist|vamc|manor|(?:assisted|senior|independent)\s+living|retirement\s+(?:home|community|village|center)|"
    r"group\s+home|adult\s+day\s+(?:care|center|program)|dialysis\s+(?:center|unit|clinic)|skilled\s+nursing)\b\.?",
    re.IGNORECASE,
)
#: Units and wards: the word before one names a place only if it is a name or on no list ("kernan ew", "Lally MICU").
_UNIT_NOUN = re.compile(
    r"\b(?:er|ew|ed|icu|micu|sicu|ccu|csru|nicu|picu|ctu|cvicu|tsicu|floor|unit|ward|wing|pavilion|"
    r"tower|building|bldg)\b",
    re.IGNORECASE,
)
#: A capitalised word on no list after a movement word is a place ("transferred from Sinai", "went to Harbor").
_PLACE_AFTER_MOVE = re.compile(
    r"\b(?:transfer(?:red)?|xfer(?:red)?|tx'?d|admitted|arrived|sent|taken|went|brought|presented|returned|came|"
    r"discharged|lives|living|resides|moved|born|visiting|transported|flown|medflight(?:ed)?)[ \t]+(?:back[ \t]+)?"
    r"(?:to|from|at|in|into)[ \t]+(?:the[ \t]+)?(?P<v>[A-Z][a-z][A-Za-z'’-]+(?:[ \t]+[A-Z][a-z][A-Za-z'’-]+){0,2})"
)
_STRONG_FACILITY = re.compile(r"hosp|medical|med\b|regional|memorial|adventist|vamc|infirmary", re.IGNORECASE)


def _facility_word(text: str, tok: re.Match[str], strong_noun: bool) -> bool:
    """A word that can be part of a facility's name: a name or a word on no list, a capitalised word in
    mixed-case text, or any word before an unambiguous noun (``holy cross hospital``)."""
    kind = _name_kind(tok.group())
    if kind in ("strong", "maybe", "unknown"):
        return True
    line = text[text.rfind("\n", 0, tok.start()) + 1 : tok.start()]
    return strong_noun or (_style(tok.group()) == "T" and any(c.islower() for c in line + tok.group()[1:]))


_PROPER_NOUN = re.compile(r"regional|memorial|adventist|manor|vamc", re.IGNORECASE)
_PLACE_AFTER = re.compile(r"[ \t]*(?:,[ \t]*[A-Za-z]{2,}\b|area\b|county\b|rehab|hosp|general|medical)", re.IGNORECASE)
#: For a town that is also a word ("Laurel"): a cue that names a place, not "of" ("evaluation of Major depression").
_PLACE_CUE_WORD = re.compile(
    r"\b(?:lives?|living|resides?|residing|moved|from|born|in|near|nearby|"
    r"(?:went|go|going|sent|taken|brought|transfer(?:red)?|admitted|returned)\s+(?:to|at))\s+$",
    re.IGNORECASE,
)
_PLACE_CUE = re.compile(
    r"\b(?:lives?|living|resides?|residing|moved|from|born|in|at|to|near|nearby|of|transfer(?:red)?|tx'?d|"
    r"xfer(?:red)?|admitted|arrived|sent|taken|went|brought|presented|returned|visiting)\s+(?:in\s+|at\s+|to\s+|from\s+)?$",
    re.IGNORECASE,
)
#: Cues that only a place follows ("lives alone in", "med flighted from", "driving in from"): after one, a
#: gazetteer place is taken in any case, even when its words are English words ("lives in LONG BRANCH").
_PLACE_STRONG_CUE = re.compile(
    r"\b(?:(?:lives?|living|resides?|residing|stays?|staying)(?:[ \t]+(?!in\b)[A-Za-z']+){0,3}"
    r"[ \t]+(?:in|near|outside(?:[ \t]+of)?)"
    r"|(?:home|house)[ \t]+is[ \t]+in|(?:moved|relocated|born|raised|grew[ \t]+up)[ \t]+(?:to|from|in)"
    r"|(?:summer|winter|vacation|beach|lake|second|family)[ \t]+(?:home|house|place|condo|cabin)[ \t]+(?:is[ \t]+)?(?:in|at|near)"
    r"|(?:vacation(?:ing|s)?|(?:is|are|was|were)[ \t]+visiting)[ \t]+(?:in|from|at)|(?:works?|worked|working|employed)[ \t]+in"
    r"|(?:originally|is|are|was|were)[ \t]+from"
    r"|(?:driv(?:e|es|ing)|drove|flown|fl(?:y|ying|ew)|(?:med[ \t]*)?flight(?:ed)?|came|coming|arriv(?:ed|ing)|"
    r"travel(?:l?ed|l?ing)?|transfer(?:red)?|xfer(?:red)?|tx'?d|transported|sent)"
    r"[ \t]+(?:in[ \t]+|up[ \t]+|down[ \t]+|back[ \t]+)?"
    r"(?:from|to))[ \t]+(?:the[ \t]+)?$",
    re.IGNORECASE,
)
#: A facility or unit noun right after a place names it ("long branch ER", "WAS AT TULARE GENERAL").
_PLACE_FACILITY_AFTER = re.compile(
    r"[ \t]+(?:hosp(?:ital)?|general|medical[ \t]+(?:center|ctr)|med[ \t]+(?:center|ctr)|memorial|regional|er|ed|"
    r"e\.r\.|clinic|rehab|nursing[ \t]+(?:home|facility)|community[ \t]+hosp(?:ital)?|va|vamc)\b",
    re.IGNORECASE,
)
#: A ward or unit named by a word and a number after a movement word ("transfer to QUARTERMAIN 2").
_WARD = re.compile(
    r"\b(?:to|from|on|at|in|per|transfer|xfer|plan:)\s+(?P<v>[A-Za-z]{4,})[ \t]?\d{1,2}(?:/\d)?\b(?![./:]\d)", re.IGNORECASE
)
_SAINT = re.compile(r"\b(?:to|from|at|in|by)\s+(?P<v>(?:st\.|saint)\s*[A-Za-z]{3,}(?:['’]s)?)\b", re.IGNORECASE)
#: "St. Agnes" anywhere: a saint's name after "St." (a street suffix is never followed by a census name).
_SAINT_NAME = re.compile(r"(?<![\w.])(?P<v>(?:St\.|ST\.|Saint|SAINT)[ \t]*(?P<n>[A-Za-z]{3,})(?:['’]s)?)\b")
#: An acronym on no list after a place preposition, in mixed-case text ("from CBS", "at GBMC").
#: "to", "by" and "of" before an acronym are mostly clinical ("Foley to BSD", "A&O to TPP", "tip of SVC"): only
#: after a movement word do they name a place ("transferred to VAH").
_ACRONYM_PLACE = re.compile(
    r"(?:\b(?:from|at)|\b(?:transfer(?:red)?|xfer(?:red)?|sent|went|go|going|back|return(?:ed)?|admitted)[ \t]+to)"
    r"[ \t]+(?:the[ \t]+)?(?P<v>[A-Z]{3,5})\b"
)


@functools.cache
def _hospital_first_words() -> frozenset[str]:
    """First words of the hospital name cores: most tokens are not one, and are skipped at once."""
    return frozenset(core[0] for core in lexicon.HOSPITAL_CORES)


#: A place preposition right before a capitalised word of a hospital's name ("transferred to Sacred").
_HOSPITAL_PREP = re.compile(r"\b(?:from|at|to|in|by|of)[ \t]+(?:the[ \t]+)?$", re.IGNORECASE)
#: A hospital's initialism that says so: ``VAMC``, ``UMMC``, ``BIDMC``, ``VAH``.
_HOSPITAL_ACRONYM = re.compile(r"[A-Z]{1,4}MC|VAH|VAMC")
_UNIVERSITY = re.compile(
    r"\b(?P<v>(?:u|univ\.?|university)\s+(?:of\s+)?(?:"
    + "|".join(sorted((w.title() for w in _US_STATES if len(w) > 2), key=len, reverse=True))
    + r"))\b",
    re.IGNORECASE,
)
_UNIV_WORD = re.compile(r"\b(?:u|univ|university)\b", re.IGNORECASE)
#: Never a name by themselves: function words, template words, clinical abbreviations, titles, relations.
_NEVER_NAME = (
    (VOCABULARY - frozenset(w.casefold() for w in calendar.month_name[1:] + list(calendar.day_name)))
    | frozenset("hosp hospital rehab clinic unit ward floor icu micu sicu ccu csru ew er ed or pacu".split())  # noqa: SIM905
    | frozenset(r + "s" for r in _RELATIONS)
)


@functools.cache
def _place_index() -> dict[str, list[tuple[str, ...]]]:
    """Gazetteer places by first word, longest first (built on first use: importing stays cheap)."""
    index: dict[str, list[tuple[str, ...]]] = {}
    for place in lexicon.PLACES_CASED:
        words = tuple(w.casefold() for w in _LEX_TOKEN.findall(place))
        if words:
            index.setdefault(words[0], []).append(words)
    for cands in index.values():
        cands.sort(key=len, reverse=True)
    return index


def _vocab(word: str) -> bool:
    """English, clinical or template vocabulary (cannot be a name or place by itself)."""
    w = lexicon.fold(word)
    return w in VOCABULARY or lexicon.is_safe(w)


_KIND_RANK = {"stop": 0, "word": 1, "maybe": 2, "unknown": 3, "strong": 4}


@functools.lru_cache(maxsize=200_000)
def _name_kind(word: str) -> str:
    """``strong`` (census name, no word), ``maybe`` (census name and an English word), ``unknown`` (on no
    list), ``word`` (English) or ``stop`` (function, template or clinical word: never a name). A hyphenated
    word takes its most name-like part's kind (``Stord-Painter``)."""
    w = lexicon.fold(word)
    if "-" in w:
        parts = [p for p in w.split("-") if p]
        if any(len(p) < 3 for p in parts):
            return "stop"  # "e-mail", "x-ray", "b-blocker"
        return max((_name_kind(p) for p in parts), key=_KIND_RANK.__getitem__, default="stop")
    if len(w) < 3 or any(c.isdigit() for c in w) or w in _NEVER_NAME:
        return "stop"
    if w in lexicon.CLINICAL:  # "Fields" is a surname, "lung fields" clinical: a name only written as one
        return "maybe" if w in lexicon.NAMES and _style(word.strip(".,;:'’\"()[]")) == "T" else "stop"
    english = w in lexicon.SAFE
    if w in lexicon.NAMES:
        if not english and w in lexicon.RARE_LAST and _near_note_word(w):
            return "maybe"  # "stabel", "STAS", "lipps": a rare surname one typo from a note word is that word
        return "maybe" if english else "strong"
    if english or _DRUG_ENDING.search(w) or w in lexicon.DRUGS or (len(w) >= 5 and _near_note_word(w)):
        return "word"  # "Oxycontin", "toelrated", "duaghter", "NSICU": a drug or a misspelt note word is no name
    return "unknown"


def _near_note_word(w: str) -> bool:
    """One typo away from a clinical or template word (``stabel`` ~ stable, ``stas`` ~ sats)."""
    return any(e in lexicon.CLINICAL or e in VOCABULARY for e in lexicon.edits1(w))


def _style(word: str) -> str:
    """How a word is written: ``I`` initial, ``U`` upper, ``L`` lower, ``T`` title or mixed."""
    if len(word) == 1:
        return "I"
    return "U" if word.isupper() else "L" if word.islower() else "T"


#: Drug-name endings: a word on no list that ends so is a drug, not a name ("Lobetalol", "OFLOXACIN").
_DRUG_ENDING = re.compile(
    r"(?:cillin|mycin|micin|floxacin|cycline|azole|pril|sartan|olol|alol|statin|azepam|zolam|pam|xone|tidine|"
    r"prazole|dipine|parin|afil|mab|nib|vir|amide|azide|mide|pine|idine|amine|oxin|pressin|statin|ltol|lol|rol|ril)$"
)


#: A dose, a route or a giving verb by a word makes it a drug ("GIVEN ALLEGRA PO", "colace 100", "on cipro").
_DOSE_AFTER = re.compile(
    r"[ \t]*(?:\d|(?:po|iv|ivp|ivpb|sl|pr|im|sc|sq|prn|mg|mcg|gm|tab|tabs|caps?|drip|gtts?|qd|qhs|hs|bid|tid|qid|"
    r"daily|x[ \t]*\d|dose|doses)\b|q[ \t]*\d)",
    re.IGNORECASE,
)
_DOSE_BEFORE = re.compile(
    r"\b(?:given|gave|give|takes|taking|took|started|start|restarted|resumed|received|rec'?d|dose[ \t]+of|"
    r"prn|po|iv|increased|decreased|cont(?:inue|inued|inuing)?|held|hold|d/c'?d?)[ \t]+$",  # not "with", "and", "on"
    re.IGNORECASE,
)


def _given_as_drug(text: str, start: int, end: int) -> bool:
    """``text[start:end]`` is a drug's name used as one: a dose or route after it, or a giving word before."""
    if lexicon.fold(text[start:end]) not in lexicon.DRUGS:
        return False
    return bool(_DOSE_AFTER.match(text, end) or _DOSE_BEFORE.search(text[max(0, start - 20) : start]))


def is_not_name(word: str) -> bool:
    """True if ``word`` cannot be a name by itself: a function, clinical or English word that is on no census
    name list, or a number. Census names that are also words (``bill``, ``Hope``) and words on no list
    (``milovan``) may be names. For gates that skip the model on values that cannot hold a name."""
    w = lexicon.fold(word)
    return not w or any(c.isdigit() for c in w) or _name_kind(w) in ("stop", "word")


def _looks_named(text: str, m: re.Match[str]) -> bool:
    """After a weak cue, an unknown word counts only before a verb of reporting or an end (``per Saeed.``)."""
    return (
        re.match(
            r"[ \t]*(?:[.,;:)]|$|\n|(?:aware|made|ordered|notified|paged|called|in|at|to|re|who|was|is|will)\b)",
            text[m.end() : m.end() + 12],
            re.IGNORECASE,
        )
        is not None
    )


class LexiconRecognizer(LocalRecognizer):
    """Names and places found through word lists, whatever the case (``mary souza``, ``BEA TURA``).

    Names: a census name that is no English or clinical word is a name anywhere; a word on no list, a
    census name that is also a word, or an initial is a name next to a name or after a relation or role
    (``son bill``, ``np jen``, ``dr.ayoub``). Places: US places from the gazetteer (any case when the
    name is no word, capitalised otherwise), the words before a facility noun (``CALVERT HOSPITAL``,
    ``holy cross hospital``), wards named by a word and a number (``transfer to QUARTERMAIN 2``); every
    other mention of a found place word in the same text follows it.
    """

    def __init__(self) -> None:
        self.label = "LexiconRecognizer"
        super().__init__(supported_entities=[PERSON, "LOCATION", "FACILITY"], name=self.label, supported_language="en")

    def load(self) -> None:
        """Nothing to load: the lists are read at import."""

    def analyze(self, text: str, entities: list[str] | None, nlp_artifacts: Any = None) -> list[RecognizerResult]:
        """Name and place spans of one text."""
        spans = self.names(text) + self.places(text)
        return [
            RecognizerResult(
                entity_type=e,
                start=s,
                end=t,
                score=0.8,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: self.label,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                },
            )
            for s, t, e in spans
        ]

    @staticmethod
    def names(text: str) -> list[tuple[int, int, str]]:
        """Person spans by the census lists and cues."""
        toks = list(_LEX_TOKEN.finditer(text))
        kinds = [_name_kind(m.group()) for m in toks]
        is_name = [
            k == "strong" and not _EPONYM_NEXT.match(text, m.end()) and not _given_as_drug(text, m.start(), m.end())
            for k, m in zip(kinds, toks, strict=True)
        ]
        for i, m in enumerate(toks):
            before = text[max(0, m.start() - 40) : m.start()]
            if is_name[i] or "\n" in before[-3:]:
                continue
            word = m.group()
            if kinds[i] == "stop":  # "Dr. Foley", "Bernard Foley CRT": a capitalised word in a name's place
                after_name = i > 0 and is_name[i - 1] and text[toks[i - 1].end() : m.start()] == " "
                folded_word = lexicon.fold(word)
                is_name[i] = (
                    _style(word) == "T"
                    and folded_word not in _STOP
                    and bool(_TITLE_CUE.search(before) or (after_name and _CRED_NEXT.match(text, m.end())))
                ) or (  # "dr small", "dr. noone": after "dr" a vocabulary word stands in a name's place too
                    bool(_DR_CUE.search(before))
                    and folded_word.isalpha()
                    and folded_word not in _STOP
                    and folded_word not in _NOT_NAME_AFTER_DR
                    and not _NOT_AFTER_DR.fullmatch(folded_word)
                )
            elif lexicon.fold(word) in _ROLE_WORDS and (_CRED_NEXT.match(text, m.end()) or _RELATION_AFTER.match(text, m.end())):
                is_name[i] = False  # "SKIN CARE RN", "HOUSE STAFF", "decision maker (son)": a role, not a name
            elif _CRED_NEXT.match(text, m.end()) and (kinds[i] != "word" or _style(word) == "T"):
                is_name[i] = True  # "Stord-Painter MD", "Q. LANDER RRT"; not "MOVES LEGS EQUALLY MD AWARE"
            elif kinds[i] == "word":  # "dr small": a word in a name's place
                cue = _DR_CUE.search(before)
                is_name[i] = bool(cue) and not _NOT_AFTER_DR.fullmatch(lexicon.fold(word))
            else:
                weak = (
                    kinds[i] == "unknown" and _style(word) == "T" and bool(_LEX_WEAK_CUE.search(before)) and _looks_named(text, m)
                )
                reports = ((kinds[i] == "unknown" and _style(word) != "U") or lexicon.fold(word) in lexicon.FIRST) and bool(
                    _REPORTS.match(text, m.end()) or _FROM_SERVICE.match(text, m.end())
                )
                initial = (kinds[i] == "unknown" and _INITIAL_BEFORE.search(before) is not None) or (
                    kinds[i] == "maybe"  # "J. Long", "R. KING": a capital initial, one space, a capitalised name
                    and _style(word) in ("T", "U")
                    and _CAP_INITIAL_BEFORE.search(before) is not None
                    and lexicon.fold(word) not in lexicon.CLINICAL
                    and lexicon.fold(word) not in _ROLE_WORDS
                )
                family = (  # "KEEP ROMERO FAMILY", "the Costa family"
                    _style(word) != "L"
                    and lexicon.fold(word) in lexicon.LAST
                    and lexicon.fold(word) not in _FAMILY_KIND
                    and _FAMILY_NEXT.match(text, m.end())
                )
                relation = _LEX_CUE.search(before) is not None and not (
                    kinds[i] == "maybe" and _verb_after_relation(lexicon.fold(word))
                )  # "husband went home", "daughter brought": a verb, not a name
                is_name[i] = bool(
                    relation
                    or _relation_after(text, m, kinds[i])
                    or weak
                    or reports
                    or initial
                    or family
                )

        def joined(a: int, b: int) -> bool:  # tokens a < b are adjacent words of one name, written alike
            gap = text[toks[a].end() : toks[b].start()]
            sa, sb = _style(toks[a].group()), _style(toks[b].group())
            if sa != sb and "I" not in (sa, sb):
                return False
            if len(toks[a].group()) == 1:
                return gap in (". ", ".", " ")
            if gap.casefold() in (" and ", " & ", ", "):  # a list of names: "Smokey, Morris and Roger"
                return len(toks[b].group()) > 2 and (kinds[b] in ("strong", "unknown") or (kinds[b] == "maybe" and sb != "L"))
            return gap in (" ", "-")

        changed = True
        while changed:  # grow names over adjacent words: "mary souza", "Q. LANDER", "Smokey, Morris and Roger"
            changed = False
            for i in range(len(toks)):
                single = len(toks[i].group()) == 1
                if is_name[i] or (single and not (toks[i].group().isupper() and text.startswith(".", toks[i].end()))):
                    continue  # an initial is a capital with its period; "Smith   M" is a sex column
                if kinds[i] not in ("maybe", "unknown") and not single:
                    continue
                prev = i - 2 if i > 1 and toks[i - 1].group().casefold() == "and" else i - 1
                nxt = i + 1 < len(toks) and is_name[i + 1] and joined(i, i + 1)
                if (prev >= 0 and is_name[prev] and joined(prev, i)) or nxt:
                    is_name[i] = changed = True
        out: list[tuple[int, int, str]] = []
        found: set[str] = set()
        for i, m in enumerate(toks):
            if is_name[i]:
                out.append((m.start(), m.end(), PERSON))
                if kinds[i] in ("strong", "unknown") and len(m.group()) >= 3:
                    found.add(lexicon.fold(m.group()))
        cued = {m.group() for i, m in enumerate(toks) if is_name[i] and kinds[i] == "maybe" and len(m.group()) >= 3}
        if found or cued:  # other mentions of a found name word ("Souza" ... "SOUZA"; "son bill" ... "bill called")
            for i, m in enumerate(toks):
                if is_name[i]:
                    continue
                if lexicon.fold(m.group()) in found or (
                    m.group() in cued and not _DETERMINER.search(text[max(0, m.start() - 8) : m.start()])
                ):
                    out.append((m.start(), m.end(), PERSON))
        return out

    @staticmethod
    def _hospitals(text: str, toks: list[re.Match[str]], folded: list[str]) -> list[tuple[int, int, str]]:
        """Hospitals by name without a facility noun: a multi-word core of a US hospital's name (``at Holy
        Cross``, ``franklin square``; one made only of English words must be capitalised or follow a place
        word) and an initialism of one, or any ``..MC``, in capitals (``BY GBMC``, ``VAMC``)."""
        out: list[tuple[int, int, str]] = []
        cores, acronyms, firsts = lexicon.HOSPITAL_CORES, lexicon.HOSPITAL_ACRONYMS, _hospital_first_words()
        i = 0
        while i < len(toks):
            word = toks[i].group()
            if folded[i] not in firsts and not word.isupper():
                i += 1
                continue
            if (
                word.isupper()
                and ((4 <= len(word) <= 6 and word in acronyms) or _HOSPITAL_ACRONYM.fullmatch(word))
                and _name_kind(word) in ("unknown", "strong")
            ):
                out.append((toks[i].start(), toks[i].end(), "FACILITY"))
            for n in (3, 2, 1):
                words = tuple(folded[i : i + n])
                if len(words) < n or words not in cores:
                    continue
                if n == 1:  # one word: capitalised in mixed-case text after a place word ("from Harbor", "to Sacred")
                    line = text[text.rfind("\n", 0, toks[i].start()) + 1 : toks[i].start()]
                    # ... or in any case when it is no word ("at crozer", "FROM NOVANT") or follows a cue only a
                    # place follows ("transferred from fisher")
                    any_case = (not _vocab(word) and bool(_HOSPITAL_PREP.search(line[-16:]))) or bool(
                        _PLACE_STRONG_CUE.search(line[-40:])
                    )
                    if (
                        words[0] in _US_STATES
                        or words[0] in ("dr", "st", "mt", "md")
                        or lexicon.fold(word) in lexicon.CLINICAL
                        or lexicon.fold(word) in _NEVER_NAME
                        or not (
                            any_case
                            or (
                                _style(word) == "T"
                                and any(c.islower() for c in line + word[1:])
                                and _HOSPITAL_PREP.search(line[-16:])
                            )
                        )
                    ):
                        continue
                    out.append((toks[i].start(), toks[i].end(), "FACILITY"))
                    break
                if any(text[toks[k].end() : toks[k + 1].start()] not in (" ", "  ", ". ") for k in range(i, i + n - 1)):
                    continue
                if all(_vocab(w) for w in words) and not (
                    all(toks[k].group()[0].isupper() for k in range(i, i + n))
                    or _PLACE_CUE.search(text[max(0, toks[i].start() - 30) : toks[i].start()])
                ):
                    continue
                out.append((toks[i].start(), toks[i + n - 1].end(), "FACILITY"))
                i += n - 1
                break
            i += 1
        return out

    @staticmethod
    def places(text: str) -> list[tuple[int, int, str]]:
        """Place and facility spans by the gazetteer and by context."""
        out: list[tuple[int, int, str]] = []
        toks = list(_LEX_TOKEN.finditer(text))
        folded = [lexicon.fold(m.group()) for m in toks]
        ends = [m.end() for m in toks]
        index = _place_index()
        i = 0
        while i < len(toks):
            for words in index.get(folded[i], ()):
                n = len(words)
                if tuple(folded[i : i + n]) != words:
                    continue
                piece = text[toks[i].start() : toks[i + n - 1].end()]
                if "\n" in piece:
                    continue
                cased = all(t.group()[0].isupper() for t in toks[i : i + n])
                allwords = all(_vocab(w) for w in words)
                before = text[max(0, toks[i].start() - 40) : toks[i].start()]
                strong = (
                    bool(_PLACE_STRONG_CUE.search(before) or _PLACE_FACILITY_AFTER.match(text, toks[i + n - 1].end()))
                    and piece.casefold() not in _US_STATES
                    and not (
                        n == 1 and (folded[i] in _NEVER_NAME or folded[i] in lexicon.CLINICAL or folded[i] in _GENERIC_PLACE)
                    )
                )
                if strong:  # "lives in linden", "FROM SYCAMORE", "holts summit ER": a cue only a place follows
                    pass
                elif allwords:  # "Laurel", "Union": a place only written as one, in mixed-case text, after a place cue
                    before = text[max(0, toks[i].start() - 30) : toks[i].start()]
                    cased = cased and not any(t.group().isupper() for t in toks[i : i + n])
                    if not (cased and (n > 1 or _PLACE_CUE_WORD.search(before))) or piece.casefold() in _US_STATES:
                        continue
                elif n == 1 and folded[i] in lexicon.NAMES:
                    continue  # a surname that is also a town: the name rules decide
                elif n == 1 and not (
                    _PLACE_CUE.search(text[max(0, toks[i].start() - 30) : toks[i].start()])
                    or _PLACE_AFTER.match(text, toks[i].end())
                    or (len(words[0]) >= 6 and _name_kind(toks[i].group()) == "unknown")
                ):
                    continue  # "Nitro": a one-word town needs a place word around it, unless it is on no word list
                out.append((toks[i].start(), toks[i + n - 1].end(), "LOCATION"))
                i += n - 1
                break
            i += 1
        out.extend(LexiconRecognizer._hospitals(text, toks, folded))
        for m in _FACILITY_NOUN.finditer(text):
            j = bisect.bisect_right(ends, m.start()) - 1 if ends and ends[0] <= m.start() else None
            taken: list[int] = []
            strong_noun = _STRONG_FACILITY.match(m.group()) is not None
            while j is not None and j >= 0 and len(taken) < 3:
                gap = text[toks[j].end() : (toks[taken[-1]].start() if taken else m.start())]
                if gap.strip(" \t-'’") and not (folded[j] in ("st", "mt") and gap.strip() == "."):
                    break
                if folded[j] in _STOP or folded[j] in HARD_STOP or not _facility_word(text, toks[j], strong_noun):
                    break
                taken.append(j)
                j -= 1
            taken.reverse()
            while taken and (
                folded[taken[0]] in ALLOW_LIST
                or folded[taken[0]] in _COMMON
                or folded[taken[0]] in lexicon.CLINICAL
                or folded[taken[0]] in _GENERIC_PLACE
            ):
                taken.pop(0)
            if taken and sum(len(folded[k]) for k in taken) >= 3:
                # A noun that is part of the name ("LAUREL REGIONAL", "Sacred Heart Memorial") goes with it.
                end = m.end() if _PROPER_NOUN.fullmatch(m.group().rstrip(".")) else toks[taken[-1]].end()
                out.append((toks[taken[0]].start(), end, "FACILITY"))
        for m in _UNIT_NOUN.finditer(text):
            j = bisect.bisect_right(ends, m.start()) - 1 if ends and ends[0] <= m.start() else None
            if (
                j is not None
                and not text[toks[j].end() : m.start()].strip(" \t-")
                and _name_kind(toks[j].group()) in ("strong", "unknown")
                and not toks[j].group().isupper()
            ):
                out.append((toks[j].start(), toks[j].end(), "FACILITY"))
        for m in _PLACE_AFTER_MOVE.finditer(text):
            moved = m.group("v").split()
            keep = 0
            for k, w in enumerate(moved):
                if _name_kind(w) in ("strong", "unknown") or (k and _name_kind(w) in ("maybe", "word")):
                    keep = k + 1
                elif not k:
                    break
            if keep and _name_kind(moved[0]) in ("strong", "unknown"):
                piece = " ".join(moved[:keep])
                out.append((m.start("v"), m.start("v") + len(piece), "LOCATION"))
        for m in _SAINT_NAME.finditer(text):
            if _name_kind(m.group("n")) in ("strong", "maybe", "unknown"):
                out.append((m.start("v"), m.end("v"), "FACILITY"))
        for m in _ACRONYM_PLACE.finditer(text):
            line = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
            if any(c.islower() for c in line) and _name_kind(m.group("v")) in ("unknown", "strong"):
                out.append((m.start("v"), m.end("v"), "FACILITY"))
        for rx in (_WARD, _SAINT, _UNIVERSITY):
            if rx is _UNIVERSITY and not _UNIV_WORD.search(text):
                continue  # the state alternation is slow; most notes name no university
            for m in rx.finditer(text):
                word = m.group("v")
                if rx is _WARD and (_vocab(word) or lexicon.fold(word) in _US_STATES):
                    continue
                out.append((m.start("v"), m.end("v"), "FACILITY" if rx is not _WARD else "LOCATION"))
        found = {
            w
            for s, e, _ in out
            for w in (lexicon.fold(t) for t in _LEX_TOKEN.findall(text[s:e]))
            if len(w) >= 4 and not _vocab(w) and w not in _US_STATES
        }
        if found:
            out.extend((toks[k].start(), toks[k].end(), "LOCATION") for k in range(len(toks)) if folded[k] in found)
        return out


#: Words before a facility noun that do not name one ("the cardiac rehab", "an outside hospital").
_GENERIC_PLACE = frozenset(
    """
    outside local another other same different private public state county city community home nursing acute
    chronic long term short inpatient outpatient cardiac pulmonary physical occupational psych psychiatric
    rehab rehabilitation skilled assisted living hospital hosp medical his her their our your my previous prior
    current new old nearest nearby area regional general emergency family group halfway
    """.split()  # noqa: SIM905
)
#: Departments a patient is moved from and to: no place outside the hospital ("transported from Cath Lab").
_DEPARTMENT = frozenset(
    "cath cathlab lab labs pacu preop pre-op holding recovery radiology endoscopy endo echo mri ct xray x-ray".split()  # noqa: SIM905
)


# ---------------------------------------------------------------------------------------------------
# Deny-list: known PHI strings from the collaborator's own tables
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Span edges: what of a found span is replaced
# ---------------------------------------------------------------------------------------------------

#: States that are also a large city's name stay tagged: "New York" and "Washington" often mean the city.
_CITY_STATES = frozenset({"new york", "ny", "washington", "wa", "dc"})
#: Eponyms of two names that notes write as one term, in any case and spacing ("PASSY MUIR VALVE", "mallory
#: weiss tear", "CHEYNE -STOKE RESPS"): a device, a sign or a syndrome, never a person in the note.
_EPONYM_TERM = re.compile(
    r"\b(?:passy[ \t]*-?[ \t]*muir|mallory[ \t]*-?[ \t]*weiss|cheyne[ \t]*-?[ \t]*stokes?|swan[ \t]*-?[ \t]*ganz|"
    r"jackson[ \t]*-?[ \t]*pratt|guillain[ \t]*-?[ \t]*barr[eé]|stevens[ \t]*-?[ \t]*johnson|"
    r"wolff[ \t]*-?[ \t]*parkinson[ \t]*-?[ \t]*white|sengstaken[ \t]*-?[ \t]*blakemore|"
    r"child[ \t]*-?[ \t]*pugh|roux[ \t]*-?[ \t]*en[ \t]*-?[ \t]*y|"
    r"parkinson['’]?s?(?=[ \t]+(?:disease|dz|tremors?|syndrome)\b))\b",
    re.IGNORECASE,
)
#: A device noun after a place's word makes it a device's name ("Quinton cath"); not the eponyms' fuller
#: list (``_EPONYM_NEXT``), whose "scale" or "score" follow a hospital's name too ("U Maryland scale").
_DEVICE_AFTER = re.compile(r"[ \t]+(?:cath(?:eter)?s?|lines?|ports?|tubes?|drains?|valves?|pumps?)\b", re.IGNORECASE)
#: A state or country in a facility's name: before a facility noun (the lists the place rules use) or after
#: "U"/"University of".
_POSSESSIVE_GAP = re.compile(r"['’]?s?[ \t]+")


def _facility_noun_at(text: str, pos: int) -> bool:
    gap = _POSSESSIVE_GAP.match(text, pos)
    return bool(_PLACE_FACILITY_AFTER.match(text, pos) or (gap and _FACILITY_NOUN.match(text, gap.end())))


_BEFORE_IN_NAME = re.compile(r"\b(?:u|univ\.?|university(?:[ \t]+of)?)[ \t]+$", re.IGNORECASE)
#: A relation at the start of a name's span ("DAUGHTER-KRISSY", "wife: mary"): the name is what follows.
_RELATION_GLUED = re.compile(
    r"(?:" + "|".join(sorted(_RELATIONS, key=len, reverse=True)) + r")" + _IN_LAW + r"(?:[ \t]*[-:][ \t]*|[ \t]+)",
    re.IGNORECASE,
)
#: Words that make a relation of two words ("GRAND DAUGHTER", "STEP SON"): part of the relation, no name.
_RELATION_PREFIX = re.compile(r"[ \t-]*(?:" + "|".join(sorted(_RELATIONS)) + r")s?\b", re.IGNORECASE)


def tidy_spans(text: str, spans: Sequence[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Found spans cut to their identifying part, and those with none dropped (each case tested).

    Safe Harbor lets a state, a country and a continent stand ("lives in California", "SON IN EUROPE")
    unless it names a facility ("Maryland Rehab"); a two-name eponym (``Passy-Muir``) is no person; a glued
    relation and a possessive are no part of a name. A collaborator's own known PHI (``KNOWN_PHI``) is never cut.
    """
    out: list[tuple[int, int, str]] = []
    terms = [(m.start(), m.end()) for m in _EPONYM_TERM.finditer(text)] if any(sp[2] == PERSON for sp in spans) else []
    for s, e, entity in spans:
        if entity not in (PERSON, "LOCATION", "FACILITY"):
            out.append((s, e, entity))  # the word lists load only for what they judge (not for codes' [ID])
            continue
        if entity == PERSON and any(ts <= s and e <= te for ts, te in terms):
            continue
        core = lexicon.fold(text[s:e])
        wide = core not in _CITY_STATES and (
            (core in _US_STATES and (entity != PERSON or len(core) > 2))
            or (core in lexicon.COUNTRIES and (entity == PERSON or core not in lexicon.PLACES))
        )
        words = _LEX_TOKEN.findall(text, s, e)
        if entity in ("LOCATION", "FACILITY") and (
            _DEVICE_AFTER.match(text, e) or (words and all(lexicon.fold(w) in _DEPARTMENT for w in words))
        ):
            continue  # "from Quinton cath": a catheter named after its maker; "from Cath Lab": a department
        if wide and not (_facility_noun_at(text, e) or _BEFORE_IN_NAME.search(text, max(0, s - 16), s)):
            if entity in ("LOCATION", "FACILITY"):
                continue
            if entity == PERSON and core not in lexicon.FIRST and (core not in lexicon.LAST or core in lexicon.RARE_LAST):
                continue  # "EUROPE" (a rare surname too); but "Georgia", "Jordan" are names as well
        if entity == PERSON:
            if core in ("grand", "step", "great", "half", "god") and _RELATION_PREFIX.match(text, e):
                continue
            if (m := _RELATION_GLUED.match(text, s, e)) and re.search(r"[A-Za-z]{2}", text[m.end() : e]):
                s = m.end()
            if e - s > 3 and text[e - 2 : e] in ("'s", "’s", "'S", "’S"):
                e -= 2
            while e > s and text[e - 1] == "-":
                e -= 1
        out.append((s, e, entity))
    return out


class DenyTerm(NamedTuple):
    """A known PHI string and the entity type to report it as (``PERSON`` gets a surrogate)."""

    text: str
    entity: str = "KNOWN_PHI"


_DENY_TOKEN = re.compile(r"\w+(?:['’]\w+)*")


class DenyIndex:
    """Known PHI strings found as whole words, case-insensitively, by word lookup.

    A regex alternation of a collaborator's ``location`` table (one address per person: 10^5 terms)
    would try every term at every position; this looks up each word of the text once. Between the
    words of a term the text may have any spaces or punctuation (``St Agnes`` finds ``St. Agnes``).
    One-word terms that are common or clinical words (:data:`VOCABULARY`) are left out.
    """

    def __init__(self, terms: Iterable[str | DenyTerm]) -> None:
        self.index: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        seen: set[tuple[str, ...]] = set()
        for t in terms:
            term = t if isinstance(t, DenyTerm) else DenyTerm(t)
            words = tuple(w.casefold() for w in _DENY_TOKEN.findall(term.text))
            if not words or len("".join(words)) < 2 or words in seen:
                continue
            if len(words) == 1 and words[0] in VOCABULARY:
                continue  # a town called Normal or Mobile must not erase "normal" and "mobile" from every note
            seen.add(words)
            self.index.setdefault(words[0], []).append((words, term.entity))
        for cands in self.index.values():
            cands.sort(key=lambda c: len(c[0]), reverse=True)

    def __len__(self) -> int:
        return sum(len(c) for c in self.index.values())

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, entity) of every known term in ``text``, longest first at each word."""
        toks = list(_DENY_TOKEN.finditer(text))
        folded = [m.group().casefold() for m in toks]
        out: list[tuple[int, int, str]] = []
        i = 0
        while i < len(toks):
            for words, entity in self.index.get(folded[i], ()):
                n = len(words)
                if tuple(folded[i : i + n]) == words and "\n\n" not in text[toks[i].start() : toks[i + n - 1].end()]:
                    out.append((toks[i].start(), toks[i + n - 1].end(), entity))
                    i += n - 1
                    break
            i += 1
        return out


class DenyListRecognizer(LocalRecognizer):
    """Known PHI strings (facility, clinician and address values) from the collaborator's own tables."""

    def __init__(self, terms: Iterable[str | DenyTerm]) -> None:
        self.deny = DenyIndex(terms)
        self.label = "DenyListRecognizer"
        entities = sorted({e for cands in self.deny.index.values() for _, e in cands}) or ["KNOWN_PHI"]
        super().__init__(supported_entities=entities, name=self.label, supported_language="en")

    def load(self) -> None:
        """Nothing to load."""

    def analyze(self, text: str, entities: list[str] | None, nlp_artifacts: Any = None) -> list[RecognizerResult]:
        """Every known term in the text."""
        return [
            RecognizerResult(
                entity_type=e,
                start=s,
                end=t,
                score=1.0,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: self.label,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                },
            )
            for s, t, e in self.deny.find(text)
        ]


def build_recognizers(
    deny_list: Iterable[str | DenyTerm] = (),
) -> list[RegexRecognizer | ContextNameRecognizer | LexiconRecognizer | DenyListRecognizer]:
    """Every recognizer cohortsync adds to the NER model, for one worker's AnalyzerEngine.

    Presidio's own phone (phonenumbers: ~30 ms a note), date, e-mail (tldextract) and SSN recognizers
    are replaced; crypto, IBAN, NHS and the non-US national ids are not loaded at all.
    """
    recs: list[RegexRecognizer | ContextNameRecognizer | LexiconRecognizer | DenyListRecognizer] = [
        RegexRecognizer("IdentifierRecognizer", IDENTIFIER_RULES),
        RegexRecognizer("AgeRecognizer", AGE_RULES),
        RegexRecognizer("AddressRecognizer", ADDRESS_RULES),
        RegexRecognizer("DateRecognizer", DATE_RULES),
        ContextNameRecognizer(),
        LexiconRecognizer(),
    ]
    deny = list(deny_list)
    if deny:
        recs.append(DenyListRecognizer(deny))
    return recs
