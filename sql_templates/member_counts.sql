-- How many members each cohort has in the sandbox (checked against cohorts/ before every sync).
SELECT members.cohort, COUNT(*) AS n FROM members_table AS members GROUP BY members.cohort
