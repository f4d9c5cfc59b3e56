-- Empty one cohort's partition of the upload staging table (before and after an upload). Overwriting
-- with an empty SELECT works on Delta and on plain Spark tables alike.
INSERT OVERWRITE TABLE upload_table PARTITION (cohort = :cohort)
SELECT CAST(NULL AS BIGINT) AS person_id, CAST(NULL AS INT) AS batch WHERE FALSE
