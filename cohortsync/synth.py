"""Deterministic synthetic OMOP CDM v5.3 database for ``cohortsync demo``, the tests and the benchmarks.

Every value is derived from ``hash(seed, key, salt)`` inside DuckDB (never ``random()``), so a seed
gives the same rows whatever the thread count or chunking. Bulk rows are made by ``INSERT ... SELECT``
over chunks of persons, which keeps memory flat in the number of persons; Python only holds the small
dictionaries (names, streets, concepts, note templates) that are inlined as SQL list literals.

Notes carry synthetic PHI on purpose: every PHI string written into a note, with its offsets, goes to
``demo_truth.note_phi`` (dates also to ``demo_truth.note_dates`` with their format) and every person's
structured PHI to ``demo_truth.person_phi``, so de-identification can be scored against ground truth.
All text is ASCII, so DuckDB character offsets equal Python string offsets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

import duckdb

from cohortsync import omop
from cohortsync.sources.duckdb import create_omop_tables

OMOP_SCHEMA = "omop"
TRUTH_SCHEMA = "demo_truth"
POPULATED: tuple[str, ...] = ("location", "care_site", "provider", *omop.DEFAULT_TABLES)
PHI_KINDS: tuple[str, ...] = (
    "patient_name",
    "clinician_name",
    "date",
    "age",
    "phone",
    "fax",
    "email",
    "mrn",
    "ssn",
    "address",
    "account",
    "facility",
)
PERSON_PHI_KINDS: tuple[str, ...] = ("name", "phone", "ssn", "address", "email", "mrn")
LOAD_TIME = time(2, 0)
GROWTH = 0.0025  # each later weekly load adds about this share of rows to every clinical table
CHUNK = 20_000  # persons per INSERT ... SELECT pass of the first load
CHILD_SLOTS = 32  # child ids are visit_occurrence_id * CHILD_SLOTS + j: unique without a sequence

# ---------------------------------------------------------------------------------------------------
# Small dictionaries. Names include ones that are also common words, which is what trips de-id tools.

FEMALE_FIRST = (
    "Rose", "Hope", "Daisy", "Faith", "Joy", "June", "April", "Ivy", "Holly", "Dawn", "Summer", "Grace",
    "Mary", "Patricia", "Jennifer", "Linda", "Maria", "Susan", "Aisha", "Mei", "Priya", "Fatima", "Olga",
    "Ana", "Chloe", "Emily", "Sofia", "Latoya", "Keiko", "Ingrid",
)  # fmt: skip
MALE_FIRST = (
    "Will", "Grant", "Bill", "Mark", "Frank", "Gene", "Rusty", "Chase", "Hunter", "Skip", "Bob", "James",
    "John", "Robert", "Michael", "David", "Jose", "Wei", "Raj", "Mohammed", "Ivan", "Luis", "Kwame",
    "Hiroshi", "Lars", "Sean", "Tyrone", "Carlos", "Dmitri", "Ahmed",
)  # fmt: skip
LAST = (
    "Bush", "Hunter", "Baker", "Grant", "Cook", "Young", "King", "Hill", "Wood", "Rich", "Brown", "Green",
    "White", "Black", "Long", "Love", "Price", "Street", "Mills", "Fields", "Page", "Bell", "Smith",
    "Johnson", "Garcia", "Nguyen", "Patel", "Kowalski", "O'Brien", "Martinez", "Lee", "Kim", "Okafor",
    "Schmidt", "Rossi", "Haddad", "Cohen", "Tanaka", "Silva", "Garcia-Lopez",
)  # fmt: skip
# The first persons get these names, so even a tiny demo database contains them.
FIXED_NAMES: tuple[tuple[str, str, bool], ...] = (
    ("Rose", "Bush", True), ("Will", "Hunter", False), ("Hope", "Baker", True), ("Daisy", "Grant", True),
)  # fmt: skip
CLIN_FIRST = (
    "Grant", "Will", "Rose", "Hope", "Daisy", "Mark", "Faith", "Sanjay", "Elena", "Thomas", "Rebecca",
    "Omar", "Helen", "Victor", "Nadia", "Paul", "Laura", "Kevin", "Amara", "Daniel",
)  # fmt: skip
CLIN_LAST = (
    "Baker", "Hunter", "Bush", "Grant", "Cook", "Park", "Shah", "Reyes", "Fischer", "Adeyemi", "Novak",
    "Brooks", "Chen", "Moreau", "Lindqvist", "Mason", "Carter", "Stone", "Walsh", "Ortiz",
)  # fmt: skip
STREETS = (
    "Main", "Oak", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park", "Pine", "Church",
    "Market", "Rose", "Hunter", "Sunset", "Highland", "River", "Spring", "Mill", "Walnut",
)  # fmt: skip
STREET_SUFFIX = ("St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Ct", "Way")
CITIES: tuple[tuple[str, str, int], ...] = (
    ("Springfield", "IL", 62701), ("Riverton", "WY", 82501), ("Fairview", "OR", 97024),
    ("Madison", "WI", 53703), ("Georgetown", "TX", 78626), ("Salem", "MA", 1970), ("Franklin", "TN", 37064),
    ("Clinton", "IA", 52732), ("Greenville", "SC", 29601), ("Bristol", "CT", 6010), ("Dayton", "OH", 45402),
    ("Auburn", "AL", 36830), ("Oxford", "MS", 38655), ("Hudson", "NY", 12534), ("Burlington", "VT", 5401),
    ("Marion", "IN", 46952), ("Ashland", "KY", 41101), ("Milton", "PA", 17847), ("Newport", "RI", 2840),
    ("Chester", "VA", 23831),
)  # fmt: skip
EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com", "inbox.example.net")
AREA_CODES = (555, 312, 617, 415, 713, 206, 303, 404, 212, 919)
SITE_PREFIX = (
    "Riverside", "Lakeview", "St. Agnes", "Mercy", "Northgate", "Cedar Hills", "Oak Park", "Harbor",
    "Summit", "Valley",
)  # fmt: skip
SITE_KIND: tuple[tuple[str, int, str], ...] = (
    ("General Hospital", 8717, "Inpatient Hospital"), ("Family Medicine Clinic", 8940, "Office"),
    ("Medical Center", 8756, "Outpatient Hospital"), ("Internal Medicine Associates", 8940, "Office"),
    ("Imaging Center", 8756, "Outpatient Hospital"), ("Urgent Care", 8782, "Urgent Care Facility"),
)  # fmt: skip
SPECIALTIES: tuple[tuple[int, str], ...] = (
    (38004446, "Family Practice"), (38004456, "Internal Medicine"), (38004451, "Cardiology"),
    (38004510, "Emergency Medicine"), (45756825, "Diagnostic Radiology"), (38004473, "Pulmonary Disease"),
    (38004455, "Gastroenterology"), (38004478, "Neurology"),
)  # fmt: skip
RACES: tuple[tuple[int, str], ...] = (
    (8527, "White"), (8527, "White"), (8527, "White"), (8516, "Black or African American"),
    (8515, "Asian"), (8657, "American Indian or Alaska Native"), (0, "Unknown"),
)  # fmt: skip

# (concept_id, ICD-10-CM source code, name)
CONDITIONS: tuple[tuple[int, str, str], ...] = (
    (201826, "E11.9", "Type 2 diabetes mellitus without complications"), (320128, "I10", "Essential hypertension"),
    (432867, "E78.5", "Hyperlipidemia"), (255573, "J44.9", "Chronic obstructive pulmonary disease"),
    (317009, "J45.909", "Asthma, uncomplicated"), (313217, "I48.91", "Atrial fibrillation"),
    (316139, "I50.9", "Heart failure"), (317576, "I25.10", "Coronary artery disease"),
    (255848, "J18.9", "Pneumonia"), (81902, "N39.0", "Urinary tract infection"),
    (80180, "M19.90", "Osteoarthritis"), (440383, "F32.9", "Major depressive disorder"),
    (441542, "F41.9", "Anxiety disorder"), (46271022, "N18.9", "Chronic kidney disease"),
    (433736, "E66.9", "Obesity"), (140673, "E03.9", "Hypothyroidism"), (77670, "R07.9", "Chest pain"),
    (254761, "R05", "Cough"), (194133, "M54.5", "Low back pain"), (318736, "G43.909", "Migraine"),
    (4329847, "I21.9", "Acute myocardial infarction"), (443454, "I63.9", "Cerebral infarction"),
)  # fmt: skip
# (concept_id, RxNorm code, name, route source, route concept, units per day, sig)
DRUGS: tuple[tuple[int, str, str, str, int, int, str], ...] = (
    (1503297, "861007", "metformin 500 MG Oral Tablet", "PO", 4132161, 2,
     "Take 1 tablet by mouth twice daily with meals"),
    (1308216, "314076", "lisinopril 10 MG Oral Tablet", "PO", 4132161, 1, "Take 1 tablet by mouth once daily"),
    (1545958, "617312", "atorvastatin 40 MG Oral Tablet", "PO", 4132161, 1, "Take 1 tablet by mouth at bedtime"),
    (1332418, "197361", "amlodipine 5 MG Oral Tablet", "PO", 4132161, 1, "Take 1 tablet by mouth daily"),
    (1307046, "866924", "metoprolol tartrate 25 MG Oral Tablet", "PO", 4132161, 2,
     "Take 1 tablet by mouth twice daily"),
    (923645, "198053", "omeprazole 20 MG Delayed Release Oral Capsule", "PO", 4132161, 1,
     "Take 1 capsule by mouth daily before breakfast"),
    (1501700, "966222", "levothyroxine sodium 0.05 MG Oral Tablet", "PO", 4132161, 1,
     "Take 1 tablet by mouth every morning on an empty stomach"),
    (1713332, "308191", "amoxicillin 500 MG Oral Capsule", "PO", 4132161, 3,
     "Take 1 capsule by mouth three times daily for 10 days"),
    (1154343, "745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "INH", 45956874, 1,
     "Inhale 2 puffs every 4 to 6 hours as needed for wheezing"),
    (739138, "312940", "sertraline 50 MG Oral Tablet", "PO", 4132161, 1, "Take 1 tablet by mouth once daily"),
    (797399, "310431", "gabapentin 300 MG Oral Capsule", "PO", 4132161, 3,
     "Take 1 capsule by mouth three times daily"),
    (974166, "310798", "hydrochlorothiazide 25 MG Oral Tablet", "PO", 4132161, 1,
     "Take 1 tablet by mouth every morning"),
    (1177480, "197806", "ibuprofen 600 MG Oral Tablet", "PO", 4132161, 3,
     "Take 1 tablet by mouth every 8 hours as needed for pain, with food"),
    (1125315, "198440", "acetaminophen 500 MG Oral Tablet", "PO", 4132161, 4,
     "Take 2 tablets by mouth every 6 hours as needed for pain"),
    (956874, "310429", "furosemide 20 MG Oral Tablet", "PO", 4132161, 1, "Take 1 tablet by mouth every morning"),
    (1502905, "261551", "insulin glargine 100 UNT/ML Injectable Solution", "SC", 4142048, 1,
     "Inject 20 units under the skin at bedtime"),
    (1112807, "243670", "aspirin 81 MG Chewable Tablet", "PO", 4132161, 1, "Chew 1 tablet by mouth daily"),
)  # fmt: skip
# (concept_id, CPT-4 code, name)
PROCEDURES: tuple[tuple[int, str, str], ...] = (
    (2414397, "99213", "Office visit, established patient, low complexity"),
    (2414398, "99214", "Office visit, established patient, moderate complexity"),
    (2211361, "71046", "Radiologic examination, chest; 2 views"),
    (2211328, "74177", "CT abdomen and pelvis with contrast"), (2313814, "93000", "Electrocardiogram, complete"),
    (2108115, "36415", "Collection of venous blood by venipuncture"),
    (2212392, "85025", "Complete blood count with automated differential"),
    (2212093, "80053", "Comprehensive metabolic panel"), (2109260, "45378", "Colonoscopy, diagnostic"),
    (2213418, "90471", "Immunization administration"), (2211327, "70450", "CT head without contrast"),
)  # fmt: skip
# (concept_id, LOINC, name, unit concept, unit source, mean, sd, range low, range high, decimals);
# the first N_VITALS are vital signs taken at most visits, the rest are labs.
MEASUREMENTS: tuple[tuple[int, str, str, int, str, float, float, float | None, float | None, int], ...] = (
    (3004249, "8480-6", "Systolic blood pressure", 8876, "mm[Hg]", 128, 16, 90, 120, 0),
    (3012888, "8462-4", "Diastolic blood pressure", 8876, "mm[Hg]", 79, 10, 60, 80, 0),
    (3027018, "8867-4", "Heart rate", 8541, "/min", 76, 12, 60, 100, 0),
    (3025315, "29463-7", "Body weight", 9529, "kg", 80, 18, None, None, 1),
    (3020891, "8310-5", "Body temperature", 586323, "Cel", 36.8, 0.4, 36.1, 37.2, 1),
    (3000963, "718-7", "Hemoglobin [Mass/volume] in Blood", 8713, "g/dL", 13.5, 1.6, 12.0, 17.5, 1),
    (3000905, "6690-2", "Leukocytes [#/volume] in Blood", 8848, "10*3/uL", 7.4, 2.2, 4.5, 11.0, 1),
    (3024929, "777-3", "Platelets [#/volume] in Blood", 8848, "10*3/uL", 250, 60, 150, 400, 0),
    (3004501, "2345-7", "Glucose [Mass/volume] in Serum or Plasma", 8840, "mg/dL", 105, 30, 70, 99, 0),
    (3016723, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", 8840, "mg/dL", 1.0, 0.3, 0.6, 1.3, 2),
    (3019550, "2951-2", "Sodium [Moles/volume] in Serum or Plasma", 8753, "mmol/L", 139, 3, 135, 145, 0),
    (3023103, "2823-3", "Potassium [Moles/volume] in Serum or Plasma", 8753, "mmol/L", 4.2, 0.4, 3.5, 5.1, 1),
    (3004410, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", 8554, "%", 6.3, 1.1, 4.0, 5.6, 1),
    (3028437, "13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma", 8840, "mg/dL", 110, 30, 0, 99, 0),
    (3013682, "3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", 8840, "mg/dL", 15, 5, 7, 20, 0),
    (3006923, "1742-6", "Alanine aminotransferase [Enzymatic activity/volume]", 8645, "U/L", 25, 10, 7, 56, 0),
)  # fmt: skip
N_VITALS = 5
# (concept_id, LOINC, name, string answers, answer concepts (0: none), numeric max (0: not numeric))
OBSERVATIONS: tuple[tuple[int, str, str, tuple[str, ...], tuple[int, ...], int], ...] = (
    (40766362, "72166-2", "Tobacco smoking status",
     ("Never smoker", "Former smoker", "Current every day smoker", "Current some day smoker"),
     (45879404, 45883458, 45881517, 45884037), 0),
    (4074035, "74013-4", "Alcoholic drinks per day",
     ("None", "1-2 drinks per week", "3-7 drinks per week", "Daily"), (0, 0, 0, 0), 0),
    (4125612, "72514-3", "Pain severity 0-10 verbal numeric rating", (), (), 10),
    (40757645, "73830-2", "Fall risk total", ("Low risk", "Moderate risk", "High risk"), (0, 0, 0), 0),
    (4084296, "61146-7", "Patient education provided", (), (), 0),
)  # fmt: skip
VISITS: tuple[tuple[int, str], ...] = ((9201, "IP"), (9202, "OP"), (9203, "ER"))
MEDS_TEXT = (
    "metformin 500 mg PO BID", "lisinopril 10 mg PO daily", "atorvastatin 40 mg PO nightly",
    "amlodipine 5 mg PO daily", "metoprolol tartrate 25 mg PO BID", "albuterol 90 mcg 2 puffs q4-6h PRN",
    "omeprazole 20 mg PO daily", "levothyroxine 50 mcg PO daily", "furosemide 20 mg PO daily",
    "sertraline 50 mg PO daily", "aspirin 81 mg PO daily", "insulin glargine 20 units SC qHS",
)  # fmt: skip
COMPLAINTS = (
    "shortness of breath", "chest pain", "abdominal pain", "fever and productive cough", "dizziness",
    "bilateral leg swelling", "worsening fatigue", "palpitations",
)  # fmt: skip
PLANS = (
    "continue current regimen", "recheck labs in 3 months", "refer to cardiology",
    "start lisinopril 10 mg PO daily", "increase metformin to 1000 mg PO BID", "order CT abdomen",
    "low sodium diet, daily weights", "repeat CBC and BMP in 1 week",
)  # fmt: skip
# (study, findings, impression)
STUDIES: tuple[tuple[str, str, str], ...] = (
    ("CT abdomen and pelvis with contrast",
     "The liver, spleen and pancreas are unremarkable. No free fluid. Mild sigmoid diverticulosis without "
     "evidence of diverticulitis. No bowel obstruction. Lung bases are clear.",
     "No acute intra-abdominal process. Sigmoid diverticulosis."),
    ("Chest X-ray, PA and lateral",
     "Heart size is normal. Mild bibasilar atelectasis. No focal consolidation, pleural effusion or "
     "pneumothorax. Osseous structures are intact.",
     "No acute cardiopulmonary disease."),
    ("CT head without contrast",
     "No intracranial hemorrhage, mass effect or midline shift. Gray-white differentiation is preserved. "
     "Mild chronic small vessel ischemic change.",
     "No acute intracranial abnormality."),
    ("Ultrasound abdomen complete",
     "Liver measures 15.2 cm with increased echogenicity. Gallbladder without stones or wall thickening. "
     "Common bile duct 4 mm. Kidneys normal in size.",
     "Hepatic steatosis. No cholelithiasis."),
    ("CT chest with contrast",
     "No pulmonary embolism to the segmental level. 4 mm nodule in the right upper lobe. No mediastinal "
     "lymphadenopathy. Small hiatal hernia.",
     "No pulmonary embolism. 4 mm RUL nodule; follow-up CT in 12 months per Fleischner criteria."),
)  # fmt: skip
NOTE_TYPES: tuple[tuple[str, str, int, int], ...] = (
    # (title, source value, note_type_concept_id, note_class_concept_id)
    ("Discharge Summary", "DS", 44814637, 706531),
    ("Progress Note", "PN", 44814640, 706550),
    ("Radiology Report", "RAD", 44814641, 706590),
    ("Referral Letter", "REF", 44814645, 706539),
)  # fmt: skip
DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%-m/%-d/%y", "%B %-d, %Y", "%d-%b-%Y", "%b %-d", "%m/%d")

# Note templates, two per note type (in NOTE_TYPES order). {name} is a value, {name:fmt} a date in that
# strftime format ('*': a format chosen per note), {phone:sN}/{fphone:sN}/{ffax:sN} a phone number style.
TEMPLATES: tuple[str, ...] = (
    """DISCHARGE SUMMARY
{facility}
Patient: {pname_lf}    MRN: {mrn}    HAR: {har}
DOB: {dob:%m/%d/%Y}    Age: {age}    Sex: {sex}
Admission Date: {admit:%Y-%m-%d}    Discharge Date: {disch:%Y-%m-%d}
Attending: {attending}, MD    PCP: Dr. {pcp}

HISTORY OF PRESENT ILLNESS:
{pname} is a {age}-year-old {sexword} with a history of {dx1} ({dx1code}) and {dx2} ({dx2code}) who \
presented to the emergency department on {admit:%B %-d, %Y} with {complaint}. Vitals on arrival: BP {bp}, \
HR {hr}, Temp {temp} C, SpO2 {spo2}% on room air.

HOSPITAL COURSE:
Admission labs notable for WBC {wbc}, Hgb {hgb} g/dL, Plt {plt}, Cr {cr} mg/dL, glucose {glu} mg/dL. \
{study} on {admit:%-m/%-d/%y}: {impression} {pronoun} was treated supportively and improved. \
A1c {a1c}%. Blood pressure at discharge {bp}.

DISCHARGE DIAGNOSES:
1. {dx1} ({dx1code})
2. {dx2} ({dx2code})

DISCHARGE MEDICATIONS:
1. {med1}
2. {med2}
3. {med3}

FOLLOW-UP:
Follow up with Dr. {pcp_last} on {fu:%b %-d} at {facility}, {faddr}. Call {fphone:s3} with questions; \
records may be faxed to {ffax:s4}.
Patient contact: {phone:s0}, {email}. Home address: {addr}.

Electronically signed by {attending}, MD on {disch:%d-%b-%Y}
""",
    """{facility} - Inpatient Discharge Summary
Name: {pname}   DOB: {dob:%-m/%-d/%y} ({age} yo)   MRN {mrn_dash}   Account #: {har}
SSN: {ssn}   Phone: {phone:s1}
Admitted {admit:%d-%b-%Y}, discharged {disch:%m/%d/%Y}.

{prefix} {plast} was admitted for {complaint} in the setting of {dx1}. Initial BP {bp}, HR {hr}. \
Labs: WBC {wbc}, Hgb {hgb} g/dL, Na {na}, K {k}, Cr {cr}. {study} obtained; impression: {impression} \
{pronoun} was started on {med1} and {med2}, tolerated both, and remained afebrile after {admit:*}. \
Prior records from {prior:%m/%d/%Y} were reviewed. ICD-10: {dx1code}, {dx2code}.

Condition at discharge: stable. Diet: cardiac, low sodium. Activity as tolerated.
Discharge medications: {med1}; {med2}; {med3}.
Follow-up: {pcp}, MD in 1-2 weeks ({fu:%m/%d}); labs (CBC, BMP) on {fu:%Y-%m-%d}.
Home: {street}, {cityline}. Email on file: {email}.
Dictated by: Dr. {attending_last} / transcribed {disch:*}
""",
    """PROGRESS NOTE
Date of service: {ndate:%m/%d/%Y}
Patient: {pname} (MRN {mrn_dash})   DOB {dob:%Y-%m-%d}
Provider: {attending}, MD, {facility}

S: {pfirst} returns for follow-up of {dx1}. Reports {complaint} over the past week. Last seen \
{prior:%-m/%-d/%y}. Taking {med1} as prescribed; no missed doses. Denies fever or chills.
O: BP {bp}, HR {hr}, Temp {temp} C, Wt {wt} kg, SpO2 {spo2}%. Lungs clear. RRR, no murmur.
Labs: A1c {a1c}% (drawn {prior:%b %-d}), WBC {wbc}, Hgb {hgb} g/dL, Cr {cr} mg/dL.
A/P:
1. {dx1} ({dx1code}) - continue {med1}.
2. {dx2} ({dx2code}) - {plan}.
3. Health maintenance - colonoscopy due; influenza vaccine given today.
Return visit {fu:%m/%d}. Patient may be reached at {phone:s2}. {age} y/o {sexword}.

{attending}, MD
""",
    """Clinic Note - {facility}
{ndate:%B %-d, %Y}
RE: {pname_lf}   MRN: {mrn}   HAR {har}   Age {age}

{prefix} {plast} is seen today for {dx2}. {pronoun} was referred by Dr. {pcp} after an ED visit on \
{prior:*} for {complaint}. Vitals: BP {bp}, pulse {hr}, weight {wt} kg. Recent labs ({prior:%Y-%m-%d}): \
glucose {glu} mg/dL, Hgb {hgb} g/dL, Plt {plt}, K {k}. Current medications: {med1}, {med2}.

Assessment: {dx2} ({dx2code}), {dx1} ({dx1code}).
Plan: {plan}. Rx {med3}. Discussed warning signs; call {fphone:s0} with questions or worsening symptoms.
Next appointment {fu:*}. Preferred contact {phone:s3}; {email}.

Signed: {attending}, MD   {ndate:%m/%d/%Y}
""",
    """RADIOLOGY REPORT
{facility} - Department of Radiology   Fax {ffax:s1}
Patient: {pname_lf}   MRN: {mrn}   Acct: {har}   DOB: {dob:%d-%b-%Y} ({age} y)
Exam: {study}   Date of exam: {ndate:%Y-%m-%d}
Ordering physician: {pcp}, MD

CLINICAL INDICATION: {complaint}; {dx1code}.
COMPARISON: {prior:%m/%d/%Y}.
TECHNIQUE: Standard departmental protocol. Creatinine {cr} mg/dL prior to contrast.
FINDINGS: {findings}
IMPRESSION: {impression}

Dictated by {attending}, MD on {ndate:%m/%d/%Y}. Results called to Dr. {pcp_last} at {fphone:s4} on \
{ndate:%b %-d}.
""",
    """{facility} Imaging
Exam date {ndate:*}   Accession HAR-{har}
{pname} | DOB {dob:%B %-d, %Y} | {age} {sexword} | MRN {mrn_dash}
Referring: Dr. {pcp}   Reading radiologist: {attending}, MD

History: {dx1} ({dx1code}), now {complaint}. BP {bp} at triage.
Exam: {study}. Compared with prior study of {prior:%d-%b-%Y} and {prior:%m/%d}.
Findings: {findings}
Impression:
1. {impression}
2. Correlate clinically; WBC {wbc}.

Report faxed to {ffax:s3} on {ndate:%-m/%-d/%y}. Questions: {fphone:s2}.
""",
    """{facility}
{faddr}
Phone {fphone:s3}   Fax {ffax:s2}

{ndate:%B %-d, %Y}

Dear Dr. {pcp_last},

Re: {pname}, DOB {dob:%B %-d, %Y}, MRN {mrn}
SSN: {ssn}   Address: {street}, {cityline}   Phone: {phone:s1}   E-mail: {email}

Thank you for seeing {pfirst}, a pleasant {age}-year-old {sexword}, whom I am referring for evaluation \
of {dx1} ({dx1code}). Over recent months {pronoun_l} has had {complaint}. Blood pressure today was {bp} and \
heart rate {hr}. Recent labs ({prior:%m/%d/%Y}): Hgb {hgb} g/dL, WBC {wbc}, Cr {cr} mg/dL, A1c {a1c}%. \
Current medications include {med1} and {med2}. Other history: {dx2} ({dx2code}).

I would appreciate your assessment and recommendations. {prefix} {plast} can be reached at \
{phone:s4}; records from {prior:*} are enclosed.

Sincerely,

{attending}, MD
{facility}
""",
    """REFERRAL
From: {attending}, MD ({facility})   Fax: {ffax:s0}
To: {pcp}, MD
Date: {ndate:%d-%b-%Y}

Patient: {pname_lf}   DOB {dob:%m/%d/%Y}   Age {age}   MRN {mrn_dash}   HAR {har}
Address: {addr}   Tel: {phone:s2}

Reason for referral: {dx2} ({dx2code}) with {complaint}; also followed for {dx1} ({dx1code}).
Pertinent findings: BP {bp}, HR {hr}, Hgb {hgb} g/dL, WBC {wbc}, Plt {plt}, Cr {cr} mg/dL, LDL {ldl} mg/dL. \
{study} on {prior:%-m/%-d/%y}: {impression}
Medications: {med1}; {med2}; {med3}.
Requested: consultation and co-management. Please schedule before {fu:%b %-d}; first available after \
{fu:*} is acceptable.

Thank you, {attending}, MD
""",
)


@dataclass(frozen=True)
class _Ctx:
    """What every SQL snippet needs: the seed, the qualified names and the health-system sizes."""

    seed: int
    catalog: str
    providers: int
    care_sites: int

    def t(self, table: str) -> str:
        return f'"{self.catalog}"."{OMOP_SCHEMA}"."{table}"'

    def truth(self, table: str) -> str:
        return f'"{self.catalog}"."{TRUTH_SCHEMA}"."{table}"'

    def h(self, key: str, salt: int) -> str:
        # DuckDB combines the hashes of several arguments by XOR, so hash(s, k, 1) and hash(s, k, 2) are
        # strongly correlated; hashing the result again mixes them into independent values.
        return f"hash(hash({self.seed}::BIGINT, ({key})::BIGINT, {salt}::BIGINT))"

    def u(self, key: str, salt: int) -> str:
        """A uniform double in [0, 1)."""
        return f"(({self.h(key, salt)} >> 11)::DOUBLE / 9007199254740992.0)"

    def n(self, key: str, salt: int, mod: int) -> str:
        """A uniform integer in [0, mod)."""
        return f"(({self.h(key, salt)} % {mod})::BIGINT)"

    def pick(self, items: Sequence[object], key: str, salt: int) -> str:
        return f"({_lit(list(items))}[1 + {self.n(key, salt, len(items))}])"


def _lit(v: object) -> str:
    """A SQL literal for the small Python dictionaries (str, int, float, None, tuples as structs)."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_lit(x) for x in v) + "]"
    raise TypeError(f"no SQL literal for {type(v).__name__}")


def _structs(rows: Sequence[tuple[object, ...]], fields: Sequence[str]) -> str:
    """A list literal of structs; list-valued fields are passed as tuples."""
    out = []
    for r in rows:
        parts = []
        for f, x in zip(fields, r, strict=True):
            parts.append(f"'{f}': " + (_lit(list(x)) if isinstance(x, tuple) else _lit(x)))
        out.append("{" + ", ".join(parts) + "}")
    return "[" + ", ".join(out) + "]"


def _pick_struct(c: _Ctx, rows: Sequence[tuple[object, ...]], fields: Sequence[str], key: str, salt: int) -> str:
    return f"({_structs(rows, fields)}[1 + {c.n(key, salt, len(rows))}])"


def _ts(d: datetime) -> str:
    return f"TIMESTAMP '{d.isoformat(sep=' ')}'"


def _d(d: date) -> str:
    return f"DATE '{d.isoformat()}'"


# ---------------------------------------------------------------------------------------------------
# Public API


def generate(
    path: Path,
    persons: int,
    seed: int = 7,
    weeks: int = 6,
    first_load: date = date(2026, 9, 6),
    *,
    threads: int | None = None,
    memory_limit: str = "2GB",
) -> dict[str, int]:
    """Create a NEW DuckDB OMOP v5.3 database file (refuse if path exists). Returns rows per table.

    The first load (``first_load`` 02:00, a Sunday) holds the history; ``weeks - 1`` further weekly
    loads follow, each made exactly as ``append_load`` makes one. ``threads`` and ``memory_limit`` only
    bound the resources used (memory stays under the limit whatever ``persons``); they never change a row.
    """
    if path.exists():
        raise FileExistsError(f"{path} already exists; the demo generator only creates new databases")
    if persons < 1 or weeks < 1:
        raise ValueError("persons and weeks must be at least 1")
    if first_load.weekday() != 6:
        raise ValueError(f"first_load {first_load} is not a Sunday")
    providers = max(20, min(5000, persons // 100))
    care_sites = max(5, min(len(SITE_PREFIX) * len(SITE_KIND), providers // 20))
    con = _connect(path, threads, memory_limit)
    try:
        catalog = _catalog(con)
        c = _Ctx(seed, catalog, providers, care_sites)
        con.execute(f'USE "{catalog}"."main"')
        create_omop_tables(con, OMOP_SCHEMA)
        _create_truth(con, c)
        load_ts = datetime.combine(first_load, LOAD_TIME)
        con.execute("BEGIN TRANSACTION")
        _health_system(con, c, load_ts)
        con.execute("COMMIT")
        for lo in range(1, persons + 1, CHUNK):
            hi = min(persons + 1, lo + CHUNK)
            con.execute("BEGIN TRANSACTION")
            _new_persons(con, c, lo, hi, first_load, recent=False, load_ts=load_ts)
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _vs AS "
                "SELECT person_id, pcp, op_start AS lo, hist_end AS hi, person_id * 1024 + s AS vkey "
                "FROM (SELECT *, unnest(range(nvis)) AS s FROM _pp)"
            )
            _events(con, c, load_ts, force_note=False)
            con.execute("COMMIT")
        for k in range(1, weeks):
            _append(con, c, k, load_ts + timedelta(days=7 * k))
        con.execute("CHECKPOINT")
        return {t: _count(con, c.t(t)) for t in POPULATED}
    finally:
        con.close()


def append_load(path: Path, seed: int = 7) -> tuple[datetime, dict[str, int]]:
    """Append one more weekly load dated the Sunday after the current max(load_dt); returns (load_dt, rows added).

    Deterministic from (seed, load index), the index counting weeks since the first load, so appending
    to two copies of the same database gives identical rows.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no DuckDB database at {path}")
    con = _connect(path, None, "2GB")
    try:
        catalog = _catalog(con)
        con.execute(f'USE "{catalog}"."main"')
        probe = _Ctx(seed, catalog, 0, 0)
        row = con.execute(f"SELECT min(load_dt), max(load_dt) FROM {probe.t('person')}").fetchone()
        if row is None or row[0] is None:
            raise ValueError(f"{path} holds no loads to append to")
        first, last = row
        assert isinstance(first, datetime) and isinstance(last, datetime)
        providers = _count(con, probe.t("provider"))
        care_sites = _count(con, probe.t("care_site"))
        c = _Ctx(seed, catalog, providers, care_sites)
        load_ts = last + timedelta(days=7)
        before = {t: _count(con, c.t(t)) for t in POPULATED}
        _append(con, c, (load_ts - first).days // 7, load_ts)
        con.execute("CHECKPOINT")
        return load_ts, {t: _count(con, c.t(t)) - before[t] for t in POPULATED}
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------------
# Internals


def _connect(path: Path, threads: int | None, memory_limit: str) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | bool | int | float | list[str]] = {
        "memory_limit": memory_limit,
        "preserve_insertion_order": False,
    }
    if threads:
        config["threads"] = threads
    con = duckdb.connect(str(path), config=config)
    con.execute("SET enable_progress_bar = false")
    return con


def _catalog(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _create_truth(con: duckdb.DuckDBPyConnection, c: _Ctx) -> None:
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{c.catalog}"."{TRUTH_SCHEMA}"')
    con.execute(
        f"CREATE TABLE {c.truth('note_phi')} (note_id BIGINT, person_id BIGINT, kind VARCHAR, value VARCHAR, "
        "start_offset INT, end_offset INT)"
    )
    con.execute(f"CREATE TABLE {c.truth('person_phi')} (person_id BIGINT, kind VARCHAR, value VARCHAR)")
    con.execute(
        f"CREATE TABLE {c.truth('note_dates')} (note_id BIGINT, person_id BIGINT, start_offset INT, "
        "end_offset INT, date_value DATE, format VARCHAR)"
    )


def _address(c: _Ctx, key: str) -> dict[str, str]:
    """Street, city, state and ZIP for a location key (persons: person_id; care sites: -care_site_id)."""
    city = _pick_struct(c, CITIES, ("c", "s", "z"), key, 41)
    return {
        "address_1": f"(1 + {c.n(key, 42, 9899)})::VARCHAR || ' ' || {c.pick(STREETS, key, 43)} || ' ' || "
        f"{c.pick(STREET_SUFFIX, key, 44)}",
        "city": f"{city}.c",
        "state": f"{city}.s",
        "zip": f"printf('%05d', {city}.z + {c.n(key, 45, 30)})",
    }


def _phone_parts(c: _Ctx, key: str, salt: int) -> tuple[str, str, str]:
    return (
        c.pick(AREA_CODES, key, salt),
        f"(200 + {c.n(key, salt + 1, 800)})",
        f"{c.n(key, salt + 2, 10000)}",
    )


def _ssn(c: _Ctx, pid: str) -> str:
    return f"printf('%03d-%02d-%04d', 100 + {c.n(pid, 54, 565)}, 1 + {c.n(pid, 55, 99)}, 1 + {c.n(pid, 56, 9999)})"


def _email(c: _Ctx, pid: str, first: str, last: str) -> str:
    local = f"lower(replace(replace({first} || '.' || {last}, '''', ''), '-', ''))"
    return f"{local} || (10 + {c.n(pid, 57, 90)}) || '@' || {c.pick(EMAIL_DOMAINS, pid, 53)}"


def _provider_name(c: _Ctx, pid: str) -> tuple[str, str]:
    return c.pick(CLIN_FIRST, pid, 81), c.pick(CLIN_LAST, pid, 82)


def _site_name(c: _Ctx, sid: str) -> str:
    """Unique per care site as long as care_sites <= len(SITE_PREFIX) * len(SITE_KIND)."""
    kinds = _structs(SITE_KIND, ("name", "pos", "pos_name"))
    return (
        f"({_lit(list(SITE_PREFIX))}[1 + ({sid} - 1) % {len(SITE_PREFIX)}] || ' ' || "
        f"{kinds}[1 + (({sid} - 1) // {len(SITE_PREFIX)}) % {len(SITE_KIND)}].name)"
    )


def _health_system(con: duckdb.DuckDBPyConnection, c: _Ctx, load_ts: datetime) -> None:
    """Care sites (with their locations) and providers: fixed at generation, later a PHI deny-list."""
    kinds = _structs(SITE_KIND, ("name", "pos", "pos_name"))
    a = _address(c, "-i")
    con.execute(
        f"INSERT INTO {c.t('location')} (location_id, address_1, city, state, zip, location_source_value, load_dt) "
        f"SELECT i, {a['address_1']}, {a['city']}, {a['state']}, {a['zip']}, 'SITE-' || i, {_ts(load_ts)} "
        f"FROM range(1, {c.care_sites + 1}) t(i)"
    )
    kind = f"{kinds}[1 + ((i - 1) // {len(SITE_PREFIX)}) % {len(SITE_KIND)}]"
    con.execute(
        f"INSERT INTO {c.t('care_site')} (care_site_id, care_site_name, place_of_service_concept_id, location_id, "
        "care_site_source_value, place_of_service_source_value, load_dt) "
        f"SELECT i, {_site_name(c, 'i')}, {kind}.pos, i, 'CS' || lpad(i::VARCHAR, 4, '0'), {kind}.pos_name, "
        f"{_ts(load_ts)} FROM range(1, {c.care_sites + 1}) t(i)"
    )
    first, last = _provider_name(c, "i")
    spec = _pick_struct(c, SPECIALTIES, ("id", "name"), "i", 83)
    female = f"({c.n('i', 84, 2)} = 0)"
    con.execute(
        f"INSERT INTO {c.t('provider')} (provider_id, provider_name, npi, dea, specialty_concept_id, care_site_id, "
        "year_of_birth, gender_concept_id, provider_source_value, specialty_source_value, gender_source_value, "
        "load_dt) "
        f"SELECT i, {first} || ' ' || {last}, '1' || lpad({c.n('i', 85, 1_000_000_000)}::VARCHAR, 9, '0'), "
        f"chr(65 + {c.n('i', 86, 26)}::INT) || chr(65 + {c.n('i', 87, 26)}::INT) || "
        f"lpad({c.n('i', 88, 10_000_000)}::VARCHAR, 7, '0'), {spec}.id, 1 + (i - 1) % {c.care_sites}, "
        f"1950 + {c.n('i', 89, 46)}, CASE WHEN {female} THEN 8532 ELSE 8507 END, "
        f"'PRV' || lpad(i::VARCHAR, 6, '0'), {spec}.name, CASE WHEN {female} THEN 'F' ELSE 'M' END, "
        f"{_ts(load_ts)} FROM range(1, {c.providers + 1}) t(i)"
    )


def _person_names(c: _Ctx, pid: str, female: str) -> tuple[str, str]:
    """First and last name from (seed, person_id, sex): recomputable wherever a person appears."""
    fixed_first = " ".join(f"WHEN {i + 1} THEN {_lit(f)}" for i, (f, _, _) in enumerate(FIXED_NAMES))
    fixed_last = " ".join(f"WHEN {i + 1} THEN {_lit(s)}" for i, (_, s, _) in enumerate(FIXED_NAMES))
    first = (
        f"CASE {pid} {fixed_first} ELSE CASE WHEN {female} THEN {c.pick(FEMALE_FIRST, pid, 5)} "
        f"ELSE {c.pick(MALE_FIRST, pid, 6)} END END"
    )
    last = f"CASE {pid} {fixed_last} ELSE {c.pick(LAST, pid, 7)} END"
    return first, last


def _new_persons(
    con: duckdb.DuckDBPyConnection, c: _Ctx, lo: int, hi: int, ref: date, *, recent: bool, load_ts: datetime
) -> None:
    """Persons lo..hi-1 with their location, observation period and structured PHI; leaves ``_pp``.

    ``recent``: persons first registered in a later load, whose history spans months, not years.
    """
    p = "i"
    fixed_f = " ".join(f"WHEN {i + 1} THEN {_lit(f)}" for i, (_, _, f) in enumerate(FIXED_NAMES))
    female = f"CASE {p} {fixed_f} ELSE {c.n(p, 1, 2)} = 0 END"
    u_age = c.u(p, 2)
    age = (
        f"CASE WHEN {u_age} < 0.10 THEN floor({u_age} / 0.10 * 18) "
        f"WHEN {u_age} < 0.95 THEN 18 + floor(({u_age} - 0.10) / 0.85 * 72) "
        f"ELSE 90 + floor(({u_age} - 0.95) / 0.05 * 15) END"
    )
    race = _pick_struct(c, RACES, ("id", "name"), p, 10)
    start_back = f"(30 + {c.n(p, 12, 1000)})" if recent else f"(365 + {c.n(p, 12, 17 * 365)})"
    active = "true" if recent else f"({c.u(p, 13)} < 0.85)"
    plan_end = date(ref.year + 1, 12, 31)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _pp AS
        WITH b AS (
            SELECT {p} AS person_id, {female} AS female,
                   {_d(ref)} - ({age} * 365 + 1 + {c.n(p, 3, 364)})::INT AS birth_date,
                   {race} AS race, {c.u(p, 11)} < 0.12 AS hispanic,
                   1 + {c.n(p, 20, c.providers)} AS pcp, {active} AS active,
                   {c.u(p, 14)} AS u_end, 0.5 + 2.5 * {c.u(p, 15)} AS vrate,
                   {start_back} AS back, {c.n(p, 4, 1440)} AS birth_minute
            FROM range({lo}, {hi}) t({p})
        ), s AS (
            SELECT *, greatest(birth_date, {_d(ref)} - back::INT) AS op_start FROM b
        ), e AS (
            SELECT *, CASE WHEN active THEN {_d(ref - timedelta(days=1))}
                      ELSE op_start + floor(u_end * ({_d(ref - timedelta(days=1))} - op_start))::INT END AS hist_end
            FROM s
        )
        SELECT *, CASE WHEN active THEN {_d(plan_end)} ELSE hist_end END AS op_end,
               greatest(1, least(150, round((hist_end - op_start + 1) / 365.25 * vrate)))::INT AS nvis
        FROM e"""
    )
    ts = _ts(load_ts)
    mrn = f"lpad(((person_id * 7919 + {c.seed % 1_000_000}::BIGINT * 104729) % 100000000)::VARCHAR, 8, '0')"
    con.execute(
        f"""INSERT INTO {c.t('person')} (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth,
            birth_datetime, race_concept_id, ethnicity_concept_id, location_id, provider_id, care_site_id,
            person_source_value, gender_source_value, race_source_value, ethnicity_source_value, load_dt)
        SELECT person_id, CASE WHEN female THEN 8532 ELSE 8507 END, year(birth_date), month(birth_date),
               day(birth_date), birth_date::TIMESTAMP + to_minutes(birth_minute), race.id,
               CASE WHEN hispanic THEN 38003563 ELSE 38003564 END, 10000 + person_id, pcp,
               1 + (pcp - 1) % {c.care_sites}, {mrn}, CASE WHEN female THEN 'F' ELSE 'M' END, race.name,
               CASE WHEN hispanic THEN 'Hispanic or Latino' ELSE 'Not Hispanic or Latino' END, {ts}
        FROM _pp"""
    )
    a = _address(c, "person_id")
    con.execute(
        f"""INSERT INTO {c.t('location')} (location_id, address_1, address_2, city, state, zip, load_dt)
        SELECT 10000 + person_id, {a['address_1']},
               CASE WHEN {c.u('person_id', 46)} < 0.2 THEN 'Apt ' || (1 + {c.n('person_id', 47, 40)}) ||
                    chr(65 + {c.n('person_id', 48, 6)}::INT) END,
               {a['city']}, {a['state']}, {a['zip']}, {ts}
        FROM _pp"""
    )
    con.execute(
        f"""INSERT INTO {c.t('observation_period')}
            (observation_period_id, person_id, observation_period_start_date, observation_period_end_date,
             period_type_concept_id, load_dt)
        SELECT person_id, person_id, op_start, op_end, 44814724, {ts} FROM _pp"""
    )
    first, last = _person_names(c, "p.person_id", "p.gender_concept_id = 8532")
    pa, pe, pl = _phone_parts(c, "p.person_id", 50)
    ssn = _ssn(c, "p.person_id")
    con.execute(
        f"""INSERT INTO {c.truth('person_phi')}
        WITH x AS (
            SELECT p.person_id, {first} || ' ' || {last} AS name,
                   printf('%03d-%03d-%04d', {pa}, {pe}, {pl}) AS phone, {ssn} AS ssn,
                   l.address_1 || coalesce(' ' || l.address_2, '') || ', ' || l.city || ', ' || l.state || ' '
                       || l.zip AS address,
                   {_email(c, "p.person_id", first, last)} AS email,
                   p.person_source_value AS mrn
            FROM {c.t('person')} p JOIN {c.t('location')} l ON l.location_id = p.location_id
            WHERE p.person_id >= {lo} AND p.person_id < {hi}
        )
        SELECT person_id, kind, value FROM x
        UNPIVOT (value FOR kind IN (name, phone, ssn, address, email, mrn))"""
    )


def _events(con: duckdb.DuckDBPyConnection, c: _Ctx, load_ts: datetime, *, force_note: bool) -> None:
    """Visits from the seeds in ``_vs`` (person_id, pcp, lo, hi, vkey), and all their child rows and notes."""
    ts = _ts(load_ts)
    row = con.execute(f"SELECT coalesce(max(visit_occurrence_id), 0) FROM {c.t('visit_occurrence')}").fetchone()
    assert row is not None
    off = int(row[0])
    k = "vkey"
    u_type = c.u(k, 32)
    vt = f"CASE WHEN {u_type} < 0.08 THEN 0 WHEN {u_type} < 0.85 THEN 1 ELSE 2 END"  # IP, OP, ER
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _v AS
        WITH a AS (
            SELECT person_id, pcp, hi, vkey, lo + ({c.n(k, 31, 1_000_000_000)} % (hi - lo + 1))::INT AS vd,
                   {vt} AS vt,
                   CASE WHEN {c.u(k, 35)} < 0.6 THEN pcp ELSE 1 + {c.n(k, 36, c.providers)} END AS provider_id
            FROM _vs
        ), b AS (
            SELECT *, {off} + row_number() OVER (ORDER BY person_id, vd, vkey) AS visit_occurrence_id,
                   vd::TIMESTAMP + CASE vt WHEN 1 THEN to_minutes(480 + {c.n(k, 37, 600)})
                                   ELSE to_minutes({c.n(k, 37, 1440)}) END AS start_dt,
                   CASE vt WHEN 0 THEN (vd + 1 + {c.n(k, 38, 8)}::INT)::TIMESTAMP + to_minutes(540 + {c.n(k, 39, 480)})
                           WHEN 1 THEN vd::TIMESTAMP + to_minutes(480 + {c.n(k, 37, 600)} + 15 + {c.n(k, 39, 75)})
                           ELSE vd::TIMESTAMP + to_minutes({c.n(k, 37, 1440)} + 120 + {c.n(k, 39, 1080)}) END AS raw_end
            FROM a
        )
        SELECT visit_occurrence_id, person_id, pcp, vt, provider_id,
               1 + (provider_id - 1) % {c.care_sites} AS care_site_id,
               start_dt, least(raw_end, (hi + 1)::TIMESTAMP - INTERVAL 1 MINUTE) AS end_dt,
               {"visit_occurrence_id = " + str(off + 1) if force_note else "false"}
               OR (person_id <= {len(FIXED_NAMES)} AND visit_occurrence_id = max(visit_occurrence_id)
                   OVER (PARTITION BY person_id)) AS force_note
        FROM b"""
    )
    visits = _structs(VISITS, ("id", "src"))
    con.execute(
        f"""INSERT INTO {c.t('visit_occurrence')} (visit_occurrence_id, person_id, visit_concept_id, visit_start_date,
            visit_start_datetime, visit_end_date, visit_end_datetime, visit_type_concept_id, provider_id, care_site_id,
            visit_source_value, admitting_source_concept_id, admitting_source_value, discharge_to_concept_id,
            discharge_to_source_value, load_dt)
        SELECT visit_occurrence_id, person_id, {visits}[vt + 1].id, start_dt::DATE, start_dt, end_dt::DATE, end_dt,
               44818518, provider_id, care_site_id, {visits}[vt + 1].src,
               CASE WHEN vt = 0 THEN 8870 END, CASE WHEN vt = 0 THEN 'Emergency Room' END,
               CASE WHEN vt = 0 THEN CASE WHEN {c.u('visit_occurrence_id', 40)} < 0.85 THEN 8536 ELSE 8863 END END,
               CASE WHEN vt = 0 THEN CASE WHEN {c.u('visit_occurrence_id', 40)} < 0.85 THEN 'HOME' ELSE 'SNF' END END,
               {ts}
        FROM _v"""
    )
    _conditions(con, c, ts)
    _drugs(con, c, ts)
    _procedures(con, c, ts)
    _measurements(con, c, ts)
    _observations(con, c, ts)
    _notes(con, c, ts)


def _children(count_sql: str) -> str:
    """Child rows of ``_v``: one per (visit, j) for j < count, with child id ``cid``."""
    return (
        f"(SELECT *, visit_occurrence_id * {CHILD_SLOTS} + j AS cid FROM "
        f"(SELECT *, unnest(range(least({CHILD_SLOTS}, {count_sql}))) AS j FROM _v))"
    )


def _conditions(con: duckdb.DuckDBPyConnection, c: _Ctx, ts: str) -> None:
    v = "visit_occurrence_id"
    n = f"CASE vt WHEN 0 THEN 2 + {c.n(v, 101, 4)} ELSE 1 + {c.n(v, 101, 2)} END"
    cond = _pick_struct(c, CONDITIONS, ("id", "code", "name"), "cid", 102)
    con.execute(
        f"""INSERT INTO {c.t('condition_occurrence')} (condition_occurrence_id, person_id, condition_concept_id,
            condition_start_date, condition_start_datetime, condition_end_date, condition_end_datetime,
            condition_type_concept_id, condition_status_concept_id, provider_id, visit_occurrence_id,
            condition_source_value, condition_status_source_value, load_dt)
        SELECT cid, person_id, {cond}.id, start_dt::DATE, start_dt,
               CASE WHEN vt = 0 THEN end_dt::DATE END, CASE WHEN vt = 0 THEN end_dt END, 32020,
               CASE WHEN j = 0 THEN 32902 ELSE 32908 END, provider_id, visit_occurrence_id, {cond}.code,
               CASE WHEN j = 0 THEN 'Primary' ELSE 'Secondary' END, {ts}
        FROM {_children(n)}"""
    )


def _drugs(con: duckdb.DuckDBPyConnection, c: _Ctx, ts: str) -> None:
    v = "visit_occurrence_id"
    r = c.n(v, 111, 10)
    n = (
        f"CASE WHEN vt = 0 THEN 1 + {c.n(v, 112, 4)} "
        f"WHEN {r} < 3 THEN 0 WHEN {r} < 7 THEN 1 WHEN {r} < 9 THEN 2 ELSE 3 END"
    )
    drug = _pick_struct(c, DRUGS, ("id", "code", "name", "route", "route_id", "per_day", "sig"), "cid", 113)
    days = f"CASE WHEN vt = 0 THEN 1 + {c.n('cid', 114, 5)} ELSE {c.pick((30, 90, 30, 7, 10), 'cid', 115)} END"
    con.execute(
        f"""INSERT INTO {c.t('drug_exposure')} (drug_exposure_id, person_id, drug_concept_id, drug_exposure_start_date,
            drug_exposure_start_datetime, drug_exposure_end_date, drug_exposure_end_datetime, drug_type_concept_id,
            stop_reason, refills, quantity, days_supply, sig, route_concept_id, provider_id, visit_occurrence_id,
            drug_source_value, route_source_value, dose_unit_source_value, load_dt)
        SELECT cid, person_id, d.id, start_dt::DATE, start_dt, start_dt::DATE + days - 1,
               start_dt + to_days(days - 1), CASE WHEN vt = 0 THEN 38000180 ELSE 38000177 END,
               CASE WHEN {c.u('cid', 116)} < 0.03 THEN 'Side effects' END,
               CASE WHEN vt = 0 THEN 0 ELSE {c.n('cid', 117, 6)} END, (days * d.per_day)::DOUBLE, days, d.sig,
               d.route_id, provider_id, visit_occurrence_id, d.code, d.route,
               CASE WHEN d.route = 'SC' THEN 'units' ELSE 'mg' END, {ts}
        FROM (SELECT *, {drug} AS d, ({days})::INT AS days FROM {_children(n)})"""
    )


def _procedures(con: duckdb.DuckDBPyConnection, c: _Ctx, ts: str) -> None:
    r = c.n("visit_occurrence_id", 121, 10)
    n = f"CASE WHEN {r} < 3 THEN 0 WHEN {r} < 8 THEN 1 ELSE 2 END"
    proc = _pick_struct(c, PROCEDURES, ("id", "code", "name"), "cid", 122)
    con.execute(
        f"""INSERT INTO {c.t('procedure_occurrence')} (procedure_occurrence_id, person_id, procedure_concept_id,
            procedure_date, procedure_datetime, procedure_type_concept_id, quantity, provider_id, visit_occurrence_id,
            procedure_source_value, load_dt)
        SELECT cid, person_id, {proc}.id, dt::DATE, dt, 38000275, 1, provider_id, visit_occurrence_id,
               {proc}.code, {ts}
        FROM (SELECT *, least(start_dt + to_minutes(10 + {c.n('cid', 123, 120)}), end_dt) AS dt FROM {_children(n)})"""
    )


def _measurements(con: duckdb.DuckDBPyConnection, c: _Ctx, ts: str) -> None:
    v = "visit_occurrence_id"
    labs = len(MEASUREMENTS) - N_VITALS
    nv = f"(2 + {c.n(v, 131, N_VITALS - 1)})"
    nl = f"CASE WHEN vt = 0 OR {c.u(v, 132)} < 0.25 THEN 3 + {c.n(v, 133, labs - 3)} ELSE 0 END"
    idx = f"CASE WHEN j < {nv} THEN j ELSE {N_VITALS} + ({c.n(v, 134, labs)} + j - {nv}) % {labs} END"
    meas = _structs(
        MEASUREMENTS, ("id", "code", "name", "unit_id", "unit", "mean", "sd", "low", "high", "dec")
    )
    z = f"(({c.u('cid', 135)} + {c.u('cid', 136)} + {c.u('cid', 137)} + {c.u('cid', 138)}) - 2) * 1.7320508"
    con.execute(
        f"""INSERT INTO {c.t('measurement')} (measurement_id, person_id, measurement_concept_id, measurement_date,
            measurement_datetime, measurement_time, measurement_type_concept_id, operator_concept_id,
            value_as_number, unit_concept_id, range_low, range_high, provider_id, visit_occurrence_id,
            measurement_source_value, unit_source_value, value_source_value, load_dt)
        SELECT cid, person_id, m.id, dt::DATE, dt, strftime(dt, '%H:%M'),
               CASE WHEN idx < {N_VITALS} THEN 44818701 ELSE 44818702 END, 4172703, val, m.unit_id, m.low, m.high,
               provider_id, visit_occurrence_id, m.code, m.unit, val::VARCHAR, {ts}
        FROM (
            SELECT *, round(greatest(m.mean + m.sd * {z}, m.mean / 10), m.dec::INT) AS val FROM (
                SELECT *, {meas}[idx + 1] AS m,
                       least(start_dt + to_minutes(5 + {c.n('cid', 139, 90)}), end_dt) AS dt
                FROM (SELECT *, {idx} AS idx FROM {_children(f'{nv} + {nl}')})
            )
        )"""
    )


def _observations(con: duckdb.DuckDBPyConnection, c: _Ctx, ts: str) -> None:
    n = f"1 + {c.n('visit_occurrence_id', 141, 2)}"
    obs = _structs(OBSERVATIONS, ("id", "code", "name", "answers", "answer_ids", "num_max"))
    con.execute(
        f"""INSERT INTO {c.t('observation')} (observation_id, person_id, observation_concept_id, observation_date,
            observation_datetime, observation_type_concept_id, value_as_number, value_as_string, value_as_concept_id,
            provider_id, visit_occurrence_id, observation_source_value, load_dt)
        SELECT cid, person_id, o.id, dt::DATE, dt, 38000280,
               CASE WHEN o.num_max > 0 THEN {c.n('cid', 143, 11)} END,
               CASE WHEN len(o.answers) > 0 THEN o.answers[a] END,
               nullif(CASE WHEN len(o.answer_ids) > 0 THEN o.answer_ids[a] END, 0),
               provider_id, visit_occurrence_id, o.code, {ts}
        FROM (
            SELECT *, 1 + ({c.h('cid', 144)} % greatest(1, len(o.answers)))::BIGINT AS a FROM (
                SELECT *, {obs}[1 + ({c.n('visit_occurrence_id', 142, len(OBSERVATIONS))} + j) % {len(OBSERVATIONS)}]
                           AS o,
                       least(start_dt + to_minutes(3 + {c.n('cid', 145, 60)}), end_dt) AS dt
                FROM {_children(n)}
            )
        )"""
    )


# --- notes ------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([a-z_0-9]+)(?::([^}]*))?\}")
_DATE_FIELDS = {"dob", "admit", "disch", "ndate", "fu", "prior"}
_PHONE_STYLES = {
    "s0": "+1 (%03d) %03d-%04d",
    "s1": "1-%03d-%03d-%04d",
    "s2": "%03d.%03d.%04d",
    "s3": "(%03d) %03d-%04d",
    "s4": "%03d-%03d-%04d",
}
# placeholder -> (PHI kind or None, SQL value over the _nv columns)
_VALUES: dict[str, tuple[str | None, str]] = {
    "pname": ("patient_name", "first || ' ' || last"),
    "pname_lf": ("patient_name", "upper(last) || ', ' || upper(first)"),
    "pfirst": ("patient_name", "first"),
    "plast": ("patient_name", "last"),
    "age": ("age", "age::VARCHAR"),
    "mrn": ("mrn", "mrn"),
    "mrn_dash": ("mrn", "substr(mrn, 1, 3) || '-' || substr(mrn, 4, 2) || '-' || substr(mrn, 6, 3)"),
    "ssn": ("ssn", "ssn"),
    "email": ("email", "email"),
    "addr": ("address", "address_1 || ', ' || city || ', ' || state || ' ' || zip"),
    "street": ("address", "address_1"),
    "cityline": ("address", "city || ', ' || state || ' ' || zip"),
    "faddr": ("address", "f_address_1 || ', ' || f_city || ', ' || f_state || ' ' || f_zip"),
    "har": ("account", "har"),
    "attending": ("clinician_name", "att_first || ' ' || att_last"),
    "attending_last": ("clinician_name", "att_last"),
    "pcp": ("clinician_name", "pcp_first || ' ' || pcp_last"),
    "pcp_last": ("clinician_name", "pcp_last"),
    "facility": ("facility", "facility"),
    "sex": (None, "CASE WHEN female THEN 'F' ELSE 'M' END"),
    "sexword": (None, "CASE WHEN female THEN 'woman' ELSE 'man' END"),
    "prefix": (None, "CASE WHEN female THEN 'Ms.' ELSE 'Mr.' END"),
    "pronoun": (None, "CASE WHEN female THEN 'She' ELSE 'He' END"),
    "pronoun_l": (None, "CASE WHEN female THEN 'she' ELSE 'he' END"),
    "bp": (None, "bp_s || '/' || bp_d"),
    "hr": (None, "hr::VARCHAR"),
    "temp": (None, "temp::VARCHAR"),
    "spo2": (None, "spo2::VARCHAR"),
    "wt": (None, "wt::VARCHAR"),
    "hgb": (None, "hgb::VARCHAR"),
    "wbc": (None, "wbc::VARCHAR"),
    "plt": (None, "plt::VARCHAR"),
    "cr": (None, "cr::VARCHAR"),
    "glu": (None, "glu::VARCHAR"),
    "a1c": (None, "a1c::VARCHAR"),
    "na": (None, "na::VARCHAR"),
    "k": (None, "k::VARCHAR"),
    "ldl": (None, "ldl::VARCHAR"),
    "dx1": (None, "dx1.name"),
    "dx1code": (None, "dx1.code"),
    "dx2": (None, "dx2.name"),
    "dx2code": (None, "dx2.code"),
    "med1": (None, "med1"),
    "med2": (None, "med2"),
    "med3": (None, "med3"),
    "complaint": (None, "complaint"),
    "plan": (None, "plan"),
    "study": (None, "study.name"),
    "findings": (None, "study.findings"),
    "impression": (None, "study.impression"),
}


def _seg(kind: str | None, value: str, fmt: str | None = None, day: str | None = None) -> str:
    k = _lit(kind) if kind else "NULL::VARCHAR"
    f = _lit(fmt) if fmt else "NULL::VARCHAR"
    d = day if day else "NULL::DATE"
    return f"{{'k': {k}, 'v': {value}, 'f': {f}, 'd': {d}}}"


def _compile_template(c: _Ctx, template: str) -> str:
    """A note template as a SQL list of segments {k: PHI kind, v: text, f: date format, d: date}."""
    segs: list[str] = []
    pos = 0
    for i, m in enumerate(_PLACEHOLDER.finditer(template)):
        if m.start() > pos:
            segs.append(_seg(None, _lit(template[pos : m.start()])))
        name, arg = m.group(1), m.group(2)
        if name in _DATE_FIELDS:
            if arg is None:
                raise ValueError(f"date placeholder {{{name}}} needs a format")
            if arg == "*":
                cases = " ".join(
                    f"WHEN {j} THEN {_seg('date', f'strftime({name}, {_lit(f)})', f, name)}"
                    for j, f in enumerate(DATE_FORMATS)
                )
                segs.append(f"CASE {c.n('note_id', 200 + i, len(DATE_FORMATS))} {cases} END")
            else:
                segs.append(_seg("date", f"strftime({name}, {_lit(arg)})", arg, name))
        elif name in ("phone", "fphone", "ffax"):
            style = _PHONE_STYLES[arg or "s4"]
            parts = {"phone": "pa, pe, pl", "fphone": "fa, fe, fl", "ffax": "fa, xe, xl"}[name]
            segs.append(_seg("fax" if name == "ffax" else "phone", f"printf({_lit(style)}, {parts})"))
        else:
            kind, value = _VALUES[name]
            segs.append(_seg(kind, value))
        pos = m.end()
    if pos < len(template):
        segs.append(_seg(None, _lit(template[pos:])))
    return "[" + ", ".join(segs) + "]"


def _distinct(c: _Ctx, items: str, size: int, key: str, salt: int) -> tuple[str, str, str]:
    """Three different elements of a list literal, so a note does not list the same drug twice."""
    i, a, b = c.n(key, salt, size), c.n(key, salt + 50, size - 1), c.n(key, salt + 51, size - 2)
    return (
        f"({items}[1 + {i}])",
        f"({items}[1 + ({i} + 1 + {a}) % {size}])",
        f"({items}[1 + ({i} + 1 + ({a} + 1 + {b}) % {size - 1}) % {size}])",
    )


def _notes(con: duckdb.DuckDBPyConnection, c: _Ctx, ts: str) -> None:
    """Notes for a share of the visits in ``_v``, with their PHI ground truth."""
    v = "visit_occurrence_id"
    u = c.u(v, 151)
    pick = f"(force_note OR (vt = 0 AND {u} < 0.5) OR (vt <> 0 AND {u} < 0.1))"
    r = c.u(v, 152)
    ntype = (
        f"CASE vt WHEN 0 THEN CASE WHEN {r} < 0.6 THEN 0 ELSE 1 END "
        f"WHEN 2 THEN CASE WHEN {r} < 0.5 THEN 1 ELSE 2 END "
        f"ELSE CASE WHEN {r} < 0.5 THEN 1 WHEN {r} < 0.75 THEN 2 ELSE 3 END END"
    )
    first, last = _person_names(c, "p.person_id", "p.gender_concept_id = 8532")
    att_first, att_last = _provider_name(c, "provider_id")
    pcp_first, pcp_last = _provider_name(c, "pcp")
    pa, pe, pl = _phone_parts(c, "p.person_id", 50)
    fa, fe, fl = _phone_parts(c, "-care_site_id", 60)
    ssn = _ssn(c, "p.person_id")
    fad = _address(c, "-care_site_id")
    n = "note_id"
    dx = _distinct(c, _structs(CONDITIONS, ("id", "code", "name")), len(CONDITIONS), n, 185)
    meds = _distinct(c, _lit(list(MEDS_TEXT)), len(MEDS_TEXT), n, 187)
    cases = " ".join(f"WHEN {i} THEN {_compile_template(c, t)}" for i, t in enumerate(TEMPLATES))
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _nv AS
        WITH sel AS (
            SELECT *, {ntype} AS ntype FROM _v WHERE {pick}
        ), x AS (
            SELECT s.visit_occurrence_id AS note_id, s.visit_occurrence_id, s.person_id, s.provider_id, s.pcp,
                   s.care_site_id, s.ntype, s.ntype * 2 + {c.n('s.visit_occurrence_id', 153, 2)} AS tmpl,
                   CASE WHEN s.ntype = 0 THEN s.end_dt ELSE s.start_dt END AS ndt,
                   s.start_dt::DATE AS admit, s.end_dt::DATE AS disch,
                   p.birth_datetime::DATE AS dob, p.gender_concept_id = 8532 AS female, p.person_source_value AS mrn,
                   {first} AS first, {last} AS last, {ssn} AS ssn, {pa} AS pa, {pe} AS pe, {pl} AS pl,
                   {_email(c, "p.person_id", first, last)} AS email,
                   l.address_1 || coalesce(' ' || l.address_2, '') AS address_1, l.city, l.state, l.zip
            FROM sel s JOIN {c.t('person')} p ON p.person_id = s.person_id
            JOIN {c.t('location')} l ON l.location_id = p.location_id
        )
        SELECT *, ndt::DATE AS ndate,
               ndt::DATE + (7 + {c.n(n, 160, 60)})::INT AS fu, admit - (30 + {c.n(n, 161, 700)})::INT AS prior,
               year(ndt) - year(dob) - CASE WHEN month(ndt) * 100 + day(ndt) < month(dob) * 100 + day(dob)
                                       THEN 1 ELSE 0 END AS age,
               (1000000000 + {c.n(n, 162, 9_000_000_000)})::VARCHAR AS har,
               {att_first} AS att_first, {att_last} AS att_last, {pcp_first} AS pcp_first, {pcp_last} AS pcp_last,
               {_site_name(c, 'care_site_id')} AS facility,
               {fad['address_1']} AS f_address_1, {fad['city']} AS f_city, {fad['state']} AS f_state,
               {fad['zip']} AS f_zip, {fa} AS fa, {fe} AS fe, {fl} AS fl,
               (200 + {c.n('-care_site_id', 63, 800)}) AS xe, {c.n('-care_site_id', 64, 10000)} AS xl,
               100 + {c.n(n, 170, 60)} AS bp_s, 60 + {c.n(n, 171, 35)} AS bp_d, 55 + {c.n(n, 172, 55)} AS hr,
               round(36.2 + {c.u(n, 173)} * 2.6, 1) AS temp, 91 + {c.n(n, 174, 9)} AS spo2,
               round(50 + {c.u(n, 175)} * 70, 1) AS wt, round(9.5 + {c.u(n, 176)} * 7.4, 1) AS hgb,
               round(3.5 + {c.u(n, 177)} * 11.4, 1) AS wbc, 150 + {c.n(n, 178, 300)} AS plt,
               round(0.6 + {c.u(n, 179)} * 1.8, 2) AS cr, 70 + {c.n(n, 180, 190)} AS glu,
               round(5.2 + {c.u(n, 181)} * 5.7, 1) AS a1c, 132 + {c.n(n, 182, 14)} AS na,
               round(3.3 + {c.u(n, 183)} * 2.0, 1) AS k, 60 + {c.n(n, 184, 120)} AS ldl,
               {dx[0]} AS dx1, {dx[1]} AS dx2, {meds[0]} AS med1, {meds[1]} AS med2, {meds[2]} AS med3,
               {c.pick(COMPLAINTS, n, 190)} AS complaint,
               {c.pick(PLANS, n, 191)} AS plan,
               {_pick_struct(c, STUDIES, ('name', 'findings', 'impression'), n, 192)} AS study
        FROM x"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _seg AS
        SELECT note_id, person_id, i, s.k AS kind, s.v AS value, s.f AS fmt, s.d AS day,
               sum(length(s.v)) OVER (PARTITION BY note_id ORDER BY i) AS end_offset
        FROM (SELECT note_id, person_id, unnest(segs) AS s, generate_subscripts(segs, 1) AS i
              FROM (SELECT note_id, person_id, CASE tmpl {cases} END AS segs FROM _nv))"""
    )
    types = _structs(NOTE_TYPES, ("title", "src", "type_id", "class_id"))
    con.execute(
        f"""INSERT INTO {c.t('note')} (note_id, person_id, note_date, note_datetime, note_type_concept_id,
            note_class_concept_id, note_title, note_text, encoding_concept_id, language_concept_id, provider_id,
            visit_occurrence_id, note_source_value, load_dt)
        SELECT n.note_id, n.person_id, n.ndate, n.ndt, nt.type_id, nt.class_id,
               CASE WHEN n.ntype = 2 THEN 'Radiology Report: ' || struct_extract(n.study, 'name') ELSE nt.title END,
               t.txt, 32678, 4180186, n.provider_id, n.visit_occurrence_id, nt.src, {ts}
        FROM (SELECT *, {types}[ntype + 1] AS nt FROM _nv) n
        JOIN (SELECT note_id, string_agg(value, '' ORDER BY i) AS txt FROM _seg GROUP BY note_id) t USING (note_id)"""
    )
    con.execute(
        f"""INSERT INTO {c.truth('note_phi')}
        SELECT note_id, person_id, kind, value, (end_offset - length(value))::INT, end_offset::INT
        FROM _seg WHERE kind IS NOT NULL"""
    )
    con.execute(
        f"""INSERT INTO {c.truth('note_dates')}
        SELECT note_id, person_id, (end_offset - length(value))::INT, end_offset::INT, day, fmt
        FROM _seg WHERE day IS NOT NULL"""
    )


def _append(con: duckdb.DuckDBPyConnection, c: _Ctx, index: int, load_ts: datetime) -> None:
    """One later weekly load: a few new persons with their history, and recent visits of existing ones.

    About GROWTH of the persons are new; the new persons' visits plus visits of existing, still observed
    persons during the past week make up about GROWTH of the visits, so every child table grows alike.
    """
    day = load_ts.date()
    persons = _count(con, c.t("person"))
    visits = _count(con, c.t("visit_occurrence"))
    row = con.execute(f"SELECT max(person_id) FROM {c.t('person')}").fetchone()
    assert row is not None
    lo = int(row[0]) + 1
    hi = lo + max(1, round(persons * GROWTH))
    con.execute("BEGIN TRANSACTION")
    _new_persons(con, c, lo, hi, day, recent=True, load_ts=load_ts)
    row = con.execute("SELECT sum(nvis) FROM _pp").fetchone()
    assert row is not None
    existing = max(1, round(visits * GROWTH) - int(row[0]))
    week_start = day - timedelta(days=7)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _vs AS
        SELECT person_id, pcp, op_start AS lo, hist_end AS hi, person_id * 1024 + s AS vkey
        FROM (SELECT *, unnest(range(nvis)) AS s FROM _pp)
        UNION ALL
        SELECT * FROM (
            SELECT op.person_id, p.provider_id AS pcp,
                   greatest(op.observation_period_start_date, {_d(week_start)}) AS lo,
                   {_d(day - timedelta(days=1))} AS hi, -({index}::BIGINT * 1000000000 + op.person_id) AS vkey
            FROM {c.t('observation_period')} op JOIN {c.t('person')} p USING (person_id)
            WHERE op.person_id < {lo} AND op.observation_period_end_date >= {_d(day - timedelta(days=1))}
              AND op.observation_period_start_date <= {_d(day - timedelta(days=1))}
            ORDER BY {c.h(f'{index}::BIGINT * 1000000000 + op.person_id', 99)}, op.person_id
            LIMIT {existing}
        )"""
    )
    _events(con, c, load_ts, force_note=True)
    con.execute("COMMIT")
