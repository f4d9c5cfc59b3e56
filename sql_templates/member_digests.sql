-- Each cohort's sandbox membership as a count and three order-independent sums over its
-- (person_id, batch) rows, checked against cohorts/ before every sync (plan.member_digest computes the
-- same from members.txt). A count alone would miss a sandbox holding the right number of wrong ids,
-- which would land non-members' rows. Every term is below 2^31, so no sum overflows a BIGINT.
SELECT
  members.cohort,
  COUNT(*) AS n,
  SUM(members.person_id % 2147483647) AS id_low,
  SUM((members.person_id DIV 2147483647) % 2147483647) AS id_high,
  SUM(((members.person_id % 2147483647) * (members.batch + 1)) % 2147483647) AS with_batch
FROM members_table AS members
GROUP BY members.cohort
