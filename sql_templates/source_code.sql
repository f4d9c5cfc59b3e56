-- Whether a row's source value is exactly the code of its own source concept: one boolean per
-- (x_source_value, x_source_concept_id) pair, selected next to the columns of extract.sql as
-- __code_<x_source_value>. The de-identification step reads it (true: the value lands as written,
-- false: it goes through the text scrubber) and drops it; it never lands.
-- An EXISTS, not a LEFT JOIN: it answers true or false once per row even if the concept table
-- repeats a concept_id (warehouses do not enforce primary keys), so it can never multiply rows.
-- concept_id 0 is "No matching concept": the ETL found no code, so nothing is vouched for.
-- A NULL source value or concept id compares as unknown, so EXISTS is false: scrubbed.
--   concept_table  -> the concept table, in source.vocabulary_schema (default: the OMOP schema)
--   value_column / concept_column -> the pair's columns of the row (src)
EXISTS (
    SELECT 1 FROM concept_table AS vocab
    WHERE vocab.concept_id = src.concept_column AND vocab.concept_id <> 0 AND vocab.concept_code = src.value_column
)
