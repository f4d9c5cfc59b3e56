-- Members of a cohort that omop.person does not know (reported by add-cohort; refused by default).
SELECT members.person_id
FROM members_table AS members
LEFT JOIN person_table AS person ON members.person_id = person.person_id
WHERE members.cohort = :cohort AND person.person_id IS NULL
ORDER BY members.person_id
