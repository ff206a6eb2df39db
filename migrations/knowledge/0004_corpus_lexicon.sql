-- How many corpus entries each lexeme appears in: a stand-in for how common
-- a word is in leadership writing. A long question is ranked against tenant
-- passages by its rarest terms only (ranking cost grows with every term;
-- the common ones barely change the order). Refreshed whenever
-- `knowledge migrate` loads the corpus.
CREATE MATERIALIZED VIEW knowledge.corpus_lexicon AS
    SELECT word, ndoc FROM ts_stat('SELECT search FROM knowledge.entries');
CREATE UNIQUE INDEX corpus_lexicon_word ON knowledge.corpus_lexicon (word);
GRANT SELECT ON knowledge.corpus_lexicon TO tp_app;
