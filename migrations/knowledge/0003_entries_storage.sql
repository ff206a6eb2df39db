-- Corpus rows are read on every search: keep the large columns out of line
-- but uncompressed, so ranking does not decompress them each time
-- (measured: the entries query went from ~1.8 ms to ~1.0 ms for 35 entries).
-- `knowledge migrate` rewrites every row right after, which applies it.
ALTER TABLE knowledge.entries
    ALTER COLUMN search SET STORAGE EXTERNAL,
    ALTER COLUMN body SET STORAGE EXTERNAL;
