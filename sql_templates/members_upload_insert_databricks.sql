-- One chunk of a cohort's ids into the staging table. upload_rows is replaced by a multi-row
-- VALUES list of integer literals, aliased v(person_id) or v(person_id, batch); :batch is the
-- amendment number (a literal) or v.batch when each id carries its own.
INSERT INTO upload_table PARTITION (cohort = :cohort)
SELECT v.person_id, :batch AS batch FROM upload_rows
