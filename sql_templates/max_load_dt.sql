-- The upper bound of a sync window: fixed per table at the start of a run.
SELECT MAX(load_dt) AS upper FROM omop_table
