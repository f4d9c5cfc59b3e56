-- Remove one cohort's membership before it is uploaded again (idempotent replace).
DELETE FROM members_table WHERE cohort = :cohort
