-- The sandbox membership table: one row per (cohort, person). batch numbers amendments (0 = initial).
CREATE TABLE IF NOT EXISTS members_table (cohort STRING NOT NULL, person_id BIGINT NOT NULL, batch INT NOT NULL)
