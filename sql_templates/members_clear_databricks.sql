-- Empty one cohort's partition of members_table: the members table itself (delete_members) or the
-- upload staging table (before and after an upload). Overwriting a partition with an empty SELECT
-- works on Delta and on plain Spark tables alike, neither of which needs DELETE for it.
INSERT OVERWRITE TABLE members_table PARTITION (cohort = :cohort)
SELECT CAST(NULL AS BIGINT) AS person_id, CAST(NULL AS INT) AS batch WHERE FALSE
