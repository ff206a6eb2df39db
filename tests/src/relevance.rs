//! The labelled relevance set (tests/relevance/questions.toml): real
//! leadership questions, each with the corpus entries that must rank in the
//! top 3. The relevance test judges search with it; the benchmark uses its
//! questions as realistic queries.

use serde::Deserialize;

#[derive(Deserialize)]
pub struct LabelledSet {
    pub question: Vec<Question>,
}

#[derive(Deserialize)]
pub struct Question {
    pub text: String,
    pub expect: Vec<String>,
}

pub fn load() -> anyhow::Result<LabelledSet> {
    // Compiled in, so a test binary never reads another checkout's copy.
    Ok(toml::from_str(include_str!("../relevance/questions.toml"))?)
}
