-- Extraction of one OMOP table for every cohort due a window of it: one scan, fanned out by cohort.
-- Written in Databricks SQL (the canonical dialect) and parsed by sqlglot, never formatted as text.
-- cohortsync replaces the placeholders with tree nodes:
--   omop_table / members_table  -> quoted catalog.schema.table names
--   :columns                    -> the source columns, listed one by one (src."col")
--   :upper                      -> the table's max(load_dt) fixed at the start of the run
--   :lower                      -> src.load_dt > <lowest watermark>, or TRUE when a cohort backfills
--   :windows                    -> one disjunct per cohort, e.g.
--                                  members.cohort = 'a' OR (members.cohort = 'b' AND src.load_dt > <wm of b>)
SELECT members.cohort AS __cohort, :columns
FROM omop_table AS src
JOIN members_table AS members ON src.person_id = members.person_id
WHERE src.load_dt <= :upper AND :lower AND (:windows)
