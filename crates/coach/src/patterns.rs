//! Pattern lists matched in one pass: the coach's reading of text.

use aho_corasick::{AhoCorasick, AhoCorasickKind};

/// Pattern lists matched together, in one pass over a text, by one
/// Aho-Corasick automaton built once. `absorb` reads every earlier user turn
/// of every reply, and `str::contains` set up a searcher for each pattern
/// over each text, ~150 a turn: a twentieth of the services' CPU per
/// SendMessage in `perf` (session 17); one automaton per list still
/// scanned each text three times. The reply reads the new turn the same way.
pub(crate) struct PatternLists<const N: usize> {
    automaton: AhoCorasick,
    /// Where each list's patterns start in the automaton's numbering.
    starts: [usize; N],
}

impl<const N: usize> PatternLists<N> {
    pub(crate) fn new(lists: [Vec<&'static str>; N]) -> Self {
        let mut starts = [0; N];
        let mut all = Vec::new();
        for (start, list) in starts.iter_mut().zip(lists) {
            *start = all.len();
            all.extend(list);
        }
        // The lists are constants of this file: a failure is a bug in them,
        // caught by every test that absorbs a turn.
        let automaton = AhoCorasick::builder()
            .kind(Some(AhoCorasickKind::DFA))
            .ascii_case_insensitive(true)
            .build(all)
            .expect("the pattern lists build an automaton");
        Self { automaton, starts }
    }

    /// [`Self::first_listed_in`] of `text` lowered as `str::to_lowercase`
    /// lowers it: ASCII text is searched as written (the automaton ignores
    /// the case of ASCII letters), other text lowered first.
    pub(crate) fn first_listed_in_lowered(&self, text: &str) -> [Option<usize>; N] {
        if text.is_ascii() {
            self.first_listed_in(text)
        } else {
            self.first_listed_in(&text.to_lowercase())
        }
    }

    /// For each list, the index of its first pattern, in list order, that
    /// occurs anywhere in `text`, ASCII letters in either case (as
    /// `list.iter().position(|p| text.to_ascii_lowercase().contains(p))`;
    /// the patterns are lower-case).
    pub(crate) fn first_listed_in(&self, text: &str) -> [Option<usize>; N] {
        let mut first = [None; N];
        for found in self.automaton.find_overlapping_iter(text) {
            let id = found.pattern().as_usize();
            let list = self.starts.partition_point(|&start| start <= id) - 1;
            let index = id - self.starts[list];
            if first[list].is_none_or(|earlier| index < earlier) {
                first[list] = Some(index);
            }
        }
        first
    }
}
