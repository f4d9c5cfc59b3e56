-- As extract.sql, for a table whose rows reach a person through a parent row (note_nlp -> note).
-- parent_key is replaced by the linking column (note_id); the window applies to the child's load_dt.
-- __person_id carries the parent's person_id for date shifting; it is never landed.
SELECT members.cohort AS __cohort, parent.person_id AS __person_id, :columns
FROM omop_table AS src
JOIN parent_table AS parent ON src.parent_key = parent.parent_key
JOIN members_table AS members ON parent.person_id = members.person_id
WHERE src.load_dt <= :upper AND :lower AND (:windows)
