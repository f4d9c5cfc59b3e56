-- Replace one cohort's membership by what was staged, in one statement (one commit on Delta).
INSERT OVERWRITE TABLE members_table PARTITION (cohort = :cohort)
SELECT upload.person_id, upload.batch FROM upload_table AS upload WHERE upload.cohort = :cohort
