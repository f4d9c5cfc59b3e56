-- Databricks/Spark variant of members_ddl.sql: the same columns, partitioned by cohort so that one
-- cohort's membership can be replaced with INSERT OVERWRITE ... PARTITION (plain Spark tables have no
-- DELETE). The partition column is listed last, where Spark puts it anyway. No USING clause: Delta is
-- the default table format on Databricks. Also used, with another name, for the upload staging table.
CREATE TABLE IF NOT EXISTS members_table (person_id BIGINT NOT NULL, batch INT NOT NULL, cohort STRING NOT NULL)
PARTITIONED BY (cohort)
