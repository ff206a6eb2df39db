//! What the user has told us about their situation, read from their turns.

use std::sync::LazyLock;

use crate::patterns::PatternLists;

/// Company stage, as users usually describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Seed,
    SeriesA,
    SeriesB,
    SeriesC,
    LateStage,
    Public,
}

impl Stage {
    /// The stage a [`Stage::label`] names.
    pub fn from_label(label: &str) -> Option<Self> {
        [
            Stage::Seed,
            Stage::SeriesA,
            Stage::SeriesB,
            Stage::SeriesC,
            Stage::LateStage,
            Stage::Public,
        ]
        .into_iter()
        .find(|stage| stage.label() == label)
    }

    /// How users name the stage, e.g. "series B".
    pub fn label(&self) -> &'static str {
        match self {
            Stage::Seed => "seed",
            Stage::SeriesA => "series A",
            Stage::SeriesB => "series B",
            Stage::SeriesC => "series C",
            Stage::LateStage => "late stage",
            Stage::Public => "public",
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Stage::Seed => "a seed-stage company",
            Stage::SeriesA => "a series A company",
            Stage::SeriesB => "a series B company",
            Stage::SeriesC => "a series C company",
            Stage::LateStage => "a late-stage company",
            Stage::Public => "a public company",
        }
    }
}

/// The context the persona needs before advising.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContextProfile {
    pub role: Option<&'static str>,
    pub team_size: Option<u32>,
    pub stage: Option<Stage>,
    /// They said what they have tried, or that they have tried nothing.
    pub mentioned_attempts: bool,
    /// What they tried, restated in the second person (latest wins).
    pub tried: Option<String>,
    /// Their latest word on attempts was that nothing has been tried yet:
    /// an answer to "What have you already tried?", not a gap to ask about.
    pub nothing_tried: bool,
    /// A constraint they named (budget, freeze, deadline...), restated.
    pub constraint: Option<String>,
    /// The problem as they first stated it, restated.
    pub problem: Option<String>,
}

// Patterns match whole words of the normalised text (see `words`), so
// "director" is not read as "cto" nor "them" as "em".
const ROLES: &[(&str, &str)] = &[
    (" cto ", "CTO"),
    (" vp of engineering ", "VP of Engineering"),
    (" vp eng", "VP of Engineering"),
    (" vp ", "VP"),
    (" director ", "director"),
    (" engineering manager ", "engineering manager"),
    (" em ", "engineering manager"),
    (" staff engineer ", "staff engineer"),
    (" principal engineer ", "principal engineer"),
    (" tech lead ", "tech lead"),
];

const STAGES: &[(&str, Stage)] = &[
    ("pre-seed", Stage::Seed),
    ("seed", Stage::Seed),
    ("series a", Stage::SeriesA),
    ("series b", Stage::SeriesB),
    ("series c", Stage::SeriesC),
    ("series d", Stage::LateStage),
    ("late-stage", Stage::LateStage),
    ("late stage", Stage::LateStage),
    ("public company", Stage::Public),
    ("publicly traded", Stage::Public),
];

/// What a whole turn is read for: role, stage, an attempt, none tried.
static TURN_PATTERNS: LazyLock<PatternLists<4>> = LazyLock::new(|| {
    PatternLists::new([
        ROLES.iter().map(|(p, _)| *p).collect(),
        STAGES.iter().map(|(p, _)| *p).collect(),
        ATTEMPTS.to_vec(),
        NOTHING_TRIED.to_vec(),
    ])
});

/// What each sentence is read for: an attempt, a constraint, a problem.
static SENTENCE_PATTERNS: LazyLock<PatternLists<3>> = LazyLock::new(|| {
    PatternLists::new([ATTEMPTS.to_vec(), CONSTRAINTS.to_vec(), PROBLEMS.to_vec()])
});

const ATTEMPTS: &[&str] = &[
    "we tried",
    "i tried",
    "we've tried",
    "already tried",
    "tried adding",
    "didn't work",
    "did not work",
];

/// How a member says nothing has been tried yet, in the normalised words
/// of a turn (see [`words`]; a typographic apostrophe becomes a space).
/// Only "nothing" and "anything" forms: "we haven't tried pairing" says
/// nothing about what else was tried. Not "nothing so far": "nothing so
/// far has worked" says the opposite.
const NOTHING_TRIED: &[&str] = &[
    " haven't tried anything",
    " haven t tried anything",
    " have not tried anything",
    " not tried anything",
    " haven't done anything",
    " haven t done anything",
    " tried nothing",
    " nothing yet ",
    " nothing tried ",
    " nothing has been tried",
    " nothing's been tried",
    " nothing s been tried",
];

const CONSTRAINTS: &[&str] = &[
    "can't",
    "cannot",
    "budget",
    "freeze",
    "deadline",
    "by the end of",
    "must ",
    "only have",
    "not allowed",
    "no headcount",
    "board wants",
    "ceo wants",
];

const PROBLEMS: &[&str] = &[
    "struggl",
    "problem",
    "issue",
    "keeps ",
    "keep ",
    "too slow",
    "missing",
    "late",
    "burn",
    "conflict",
    "attrition",
    "quit",
    "leaving",
    "broken",
    "fail",
    "drowning",
    "frustrat",
    "bottleneck",
    "not working",
    "doesn't work",
    "hard to",
];

/// What one user turn says about the user's situation, read once: the
/// profile of a reply is its conversation's earlier user turns (up to 40)
/// read in order, and reading them again for every reply was a fifth of
/// the conversation service's instructions per SendMessage (callgrind,
/// session 30).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnFacts {
    role: Option<&'static str>,
    stage: Option<Stage>,
    team_size: Option<u32>,
    mentioned_attempts: bool,
    /// The turn says nothing has been tried (and names no attempt).
    nothing_tried: bool,
    /// The turn's last sentence naming an attempt, as written.
    tried: Option<String>,
    /// Its last sentence naming a constraint (and no attempt).
    constraint: Option<String>,
    /// Its first sentence naming a problem (and neither of those).
    problem: Option<String>,
}

impl TurnFacts {
    /// Reads one turn.
    pub fn read(turn: &str) -> Self {
        let lower = words(turn);
        let [role, stage, attempt, nothing_tried] = TURN_PATTERNS.first_listed_in(&lower);
        let (mut tried, mut constraint, mut problem) = (None, None, None);
        for sentence in turn
            .split(['.', '!', '?', ';', '\n'])
            .map(str::trim)
            .filter(|s| s.split_whitespace().count() >= 3)
        {
            let [attempt, named_constraint, named_problem] =
                SENTENCE_PATTERNS.first_listed_in_lowered(sentence);
            if attempt.is_some() {
                tried = Some(sentence);
            } else if named_constraint.is_some() {
                constraint = Some(sentence);
            } else if problem.is_none() && named_problem.is_some() {
                problem = Some(sentence);
            }
        }
        TurnFacts {
            role: role.map(|i| ROLES[i].1),
            stage: stage.map(|i| STAGES[i].1),
            team_size: team_size(&lower),
            mentioned_attempts: attempt.is_some(),
            nothing_tried: attempt.is_none() && tried.is_none() && nothing_tried.is_some(),
            tried: tried.map(str::to_owned),
            constraint: constraint.map(str::to_owned),
            problem: problem.map(str::to_owned),
        }
    }
}

/// The user's clauses a profile restates, as found in their turns: what
/// they tried and the constraint (the latest of each), the problem (the
/// first).
#[derive(Default)]
struct Clauses<'a> {
    tried: Option<&'a str>,
    constraint: Option<&'a str>,
    problem: Option<&'a str>,
}

/// Longest restatement of one of the user's clauses, in words.
const RESTATE_WORDS: usize = 14;

/// The user's clause in the second person and at most [`RESTATE_WORDS`]
/// words, so a summary restates rather than quotes.
fn restate(sentence: &str) -> String {
    // Written straight into the result, each word lowered in place: a
    // string per word, a vector of them and a copy of each to join were
    // ~8k instructions a clause, two clauses a reply (callgrind, session 31).
    let mut text = String::with_capacity(sentence.len() + 3);
    for (index, word) in sentence.split_whitespace().enumerate() {
        if index == RESTATE_WORDS {
            text.push_str("...");
            break;
        }
        if index > 0 {
            text.push(' ');
        }
        let start = text.len();
        if word.is_ascii() {
            text.extend(word.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            text.push_str(&word.to_lowercase());
        }
        if let Some(swapped) = second_person(&text[start..]) {
            text.truncate(start);
            text.push_str(swapped);
        }
    }
    text
}

/// A lowered word of the first person in the second, without the comma
/// or colon after it.
fn second_person(word: &str) -> Option<&'static str> {
    Some(match word.trim_end_matches([',', ':']) {
        "i" | "we" | "me" | "us" => "you",
        "i'm" | "we're" => "you're",
        "i've" | "we've" => "you've",
        "i'd" | "we'd" => "you'd",
        "my" | "our" => "your",
        "mine" | "ours" => "yours",
        _ => return None,
    })
}

const TEAM_NOUNS: &[&str] = &[
    "engineers",
    "engineer",
    "developers",
    "devs",
    "people",
    "person",
    "reports",
    "ics",
];

impl ContextProfile {
    /// Reads the profile from the user's turns, later turns refining earlier ones.
    pub fn from_turns<'a>(turns: impl IntoIterator<Item = &'a str>) -> Self {
        let mut profile = Self::default();
        profile.absorb_all(turns);
        profile
    }

    /// Reads more turns into the profile; what they say overrides what was known.
    pub fn absorb_all<'a>(&mut self, turns: impl IntoIterator<Item = &'a str>) {
        let facts: Vec<TurnFacts> = turns.into_iter().map(TurnFacts::read).collect();
        self.absorb_facts(&facts);
    }

    /// Reads more turns into the profile from what each says
    /// ([`TurnFacts::read`]), in order; as [`ContextProfile::absorb_all`]
    /// over the same turns. A caller that has read a turn once keeps its
    /// facts: a turn's text never changes.
    pub fn absorb_facts<'a>(&mut self, turns: impl IntoIterator<Item = &'a TurnFacts>) {
        // The clauses worth restating, restated once at the end: a reply
        // reads every earlier user turn, and later turns replace most of
        // what earlier ones said.
        let mut clauses = Clauses::default();
        for facts in turns {
            if let Some(role) = facts.role {
                self.role = Some(role);
            }
            if let Some(stage) = facts.stage {
                self.stage = Some(stage);
            }
            if let Some(size) = facts.team_size {
                self.team_size = Some(size);
            }
            if facts.mentioned_attempts {
                self.mentioned_attempts = true;
                self.nothing_tried = false;
            }
            if let Some(tried) = &facts.tried {
                clauses.tried = Some(tried);
            }
            // "Nothing yet" is the latest word on attempts: what an earlier
            // turn said it tried no longer describes the situation.
            if facts.nothing_tried {
                self.mentioned_attempts = true;
                self.nothing_tried = true;
                self.tried = None;
                clauses.tried = None;
            }
            if let Some(constraint) = &facts.constraint {
                clauses.constraint = Some(constraint);
            }
            // The problem as first stated: the first turn that states one.
            if self.problem.is_none() && clauses.problem.is_none() {
                clauses.problem = facts.problem.as_deref();
            }
        }
        if let Some(tried) = clauses.tried {
            self.tried = Some(restate(tried));
        }
        if let Some(constraint) = clauses.constraint {
            self.constraint = Some(restate(constraint));
        }
        if let Some(problem) = clauses.problem {
            self.problem = Some(restate(problem));
        }
    }

    /// The durable part of a profile kept between conversations (role, team
    /// size, stage), as stored: unknown labels are ignored, not trusted.
    pub fn from_kept(role: Option<&str>, team_size: Option<u32>, stage: Option<&str>) -> Self {
        Self {
            role: role.and_then(|r| {
                ROLES
                    .iter()
                    .map(|(_, label)| *label)
                    .find(|label| *label == r)
            }),
            team_size,
            stage: stage.and_then(Stage::from_label),
            ..Self::default()
        }
    }

    /// The part worth keeping for the member's next conversation.
    pub fn durable(&self) -> Self {
        Self {
            role: self.role,
            team_size: self.team_size,
            stage: self.stage,
            ..Self::default()
        }
    }

    /// Enough to give grounded advice: the size of the organisation and
    /// either its stage or the user's role.
    pub fn is_sufficient(&self) -> bool {
        self.team_size.is_some() && (self.stage.is_some() || self.role.is_some())
    }

    /// One sentence restating the known situation, problem, constraint and
    /// attempts, or `None` while role, size and stage are all unknown.
    pub fn summary(&self) -> Option<String> {
        // A summary restates the situation; with none of role, size or
        // stage known there is nothing to summarise yet, only to ask.
        if self.role.is_none() && self.team_size.is_none() && self.stage.is_none() {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(role) = self.role {
            let article = if role.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) {
                "an"
            } else {
                "a"
            };
            parts.push(format!("you're {article} {role}"));
        }
        if let Some(size) = self.team_size {
            parts.push(format!("the organisation has about {size} engineers"));
        }
        if let Some(stage) = self.stage {
            parts.push(format!("it's {}", stage.describe()));
        }
        if let Some(problem) = &self.problem {
            parts.push(format!("the problem: {problem}"));
        }
        if let Some(constraint) = &self.constraint {
            parts.push(format!("a constraint: {constraint}"));
        }
        match &self.tried {
            Some(tried) => parts.push(format!("already tried: {tried}")),
            None if self.nothing_tried => parts.push("nothing tried yet".to_owned()),
            None if self.mentioned_attempts => {
                parts.push("you've already tried at least one fix".to_owned())
            }
            None => {}
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The organisation in a phrase ("an organisation of about 60 engineers
    /// at a series C company"), or `None` when neither is known.
    pub fn situation(&self) -> Option<String> {
        match (self.team_size, self.stage) {
            (Some(size), Some(stage)) => Some(format!(
                "an organisation of about {size} engineers at {}",
                stage.describe()
            )),
            (Some(size), None) => Some(format!("an organisation of about {size} engineers")),
            (None, Some(stage)) => Some(stage.describe().to_owned()),
            (None, None) => None,
        }
    }

    /// The context still missing, most important first: what to ask, and
    /// what the coach goes on when the member has been asked and left it.
    pub fn missing_context(&self) -> Vec<MissingContext> {
        let mut missing = Vec::new();
        if self.team_size.is_none() {
            missing.push(MissingContext {
                question: "How many engineers are in the organisation you're responsible for?",
                assumption: "You haven't said how many engineers this covers, so I'll keep \
                             this general rather than size it to your organisation.",
            });
        }
        if self.stage.is_none() && self.role.is_none() {
            missing.push(MissingContext {
                question: "What's your role, and what stage is the company at (seed, series \
                           B, public...)?",
                assumption: "I'll read this without your role or the company's stage; tell \
                             me if either changes the picture.",
            });
        }
        if !self.mentioned_attempts {
            missing.push(MissingContext {
                question: "What have you already tried?",
                assumption: "I'll take it that nothing has been tried yet; say so if that's \
                             wrong.",
            });
        }
        missing
    }
}

/// A piece of context the persona asks for before advising.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingContext {
    /// The question that asks for it.
    pub question: &'static str,
    /// What the coach says it will go on instead, once the member was
    /// asked and answered something else: asking the same again would
    /// ignore their choice.
    pub assumption: &'static str,
}

/// Lower-case text with punctuation turned into spaces and a space at each
/// end, so patterns written as `" word "` match whole words only.
///
/// One pass over the lowered text: it runs on every earlier user turn of a
/// conversation for every reply, and was a tenth of the conversation
/// service's CPU per SendMessage as a chain of intermediate strings.
pub fn words(text: &str) -> String {
    // Most turns are ASCII, lowered a byte at a time in the same pass; any
    // other text by `str::to_lowercase`, not per character: a final sigma
    // lowers to ς.
    if text.is_ascii() {
        return words_of_lowered(
            text.bytes().map(|b| char::from(b.to_ascii_lowercase())),
            text.len(),
        );
    }
    let lower = text.to_lowercase();
    words_of_lowered(lower.chars(), lower.len())
}

/// [`words`] of text already lowered, `len` bytes long.
fn words_of_lowered(lower: impl Iterator<Item = char>, len: usize) -> String {
    let mut out = String::with_capacity(len + 2);
    out.push(' ');
    let mut chars = lower.peekable();
    let mut previous: Option<char> = None;
    let mut gap = false;
    while let Some(c) = chars.next() {
        let keep = c.is_alphanumeric()
            || matches!(c, '-' | '+' | '\'')
            // "1:1" stays one word; "me: do" does not.
            || (c == ':'
                && previous.is_some_and(|p| p.is_ascii_digit())
                && chars.peek().is_some_and(char::is_ascii_digit));
        if keep {
            if gap && out.len() > 1 {
                out.push(' ');
            }
            gap = false;
            out.push(c);
        } else {
            gap = true;
        }
        previous = Some(c);
    }
    out.push(' ');
    out
}

/// Finds "40 engineers", "a team of 12", "12-person team".
fn team_size(lower: &str) -> Option<u32> {
    let mut words = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '~'))
        .filter(|w| !w.is_empty())
        .peekable();
    // The two words before the current one: "team of 12".
    let mut before: [&str; 2] = ["", ""];
    while let Some(word) = words.next() {
        let (number, suffix) = match word.split_once('-') {
            Some((n, s)) => (n, Some(s)),
            None => (word, None),
        };
        if let Ok(n) = number.trim_start_matches('~').parse::<u32>() {
            let next = suffix.or_else(|| words.peek().copied()).unwrap_or_default();
            if TEAM_NOUNS.contains(&next) || before == ["team", "of"] {
                return Some(n);
            }
        }
        before = [before[1], word];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_size_stage_and_role() {
        let p = ContextProfile::from_turns([
            "I just became VP of Engineering; we're 40 engineers at Series B.",
        ]);
        assert_eq!(p.team_size, Some(40));
        assert_eq!(p.stage, Some(Stage::SeriesB));
        assert_eq!(p.role, Some("VP of Engineering"));
        assert!(p.is_sufficient());
    }

    #[test]
    fn kept_profiles_round_trip_and_turns_override_them() {
        let said =
            ContextProfile::from_turns(["I'm the CTO, 25 engineers, series A. We tried OKRs."]);
        let kept = said.durable();
        assert!(!kept.mentioned_attempts);
        let loaded =
            ContextProfile::from_kept(kept.role, kept.team_size, kept.stage.map(|s| s.label()));
        assert_eq!(loaded, kept);
        let mut next = loaded;
        next.absorb_all(["we're 40 engineers now"]);
        assert_eq!(next.team_size, Some(40));
        assert_eq!(next.role, Some("CTO"));
        assert_eq!(
            ContextProfile::from_kept(Some("emperor"), None, Some("galactic")),
            ContextProfile::default()
        );
    }

    #[test]
    fn roles_match_whole_words() {
        let director = ContextProfile::from_turns(["I'm a director of 60 engineers."]);
        assert_eq!(director.role, Some("director"));
        let none = ContextProfile::from_turns(["We refactor them in October."]);
        assert_eq!(none.role, None);
        assert_eq!(
            ContextProfile::from_turns(["I'm the CTO."]).role,
            Some("CTO")
        );
        assert_eq!(
            ContextProfile::from_turns(["As an EM, I..."]).role,
            Some("engineering manager")
        );
    }

    #[test]
    fn problem_constraint_and_attempts_are_restated_not_quoted() {
        let p = ContextProfile::from_turns([
            "We're 30 engineers. Our on-call rotation keeps burning people out. We can't hire until Q3. We tried a follow-the-sun rota and it fizzled.",
        ]);
        assert_eq!(
            p.problem.as_deref(),
            Some("your on-call rotation keeps burning people out")
        );
        assert_eq!(p.constraint.as_deref(), Some("you can't hire until q3"));
        assert_eq!(
            p.tried.as_deref(),
            Some("you tried a follow-the-sun rota and it fizzled")
        );
        let summary = p.summary().unwrap_or_default();
        assert!(
            summary.contains("the problem: your on-call rotation"),
            "{summary}"
        );
        assert!(!summary.contains("Our on-call"));
        // Only role, size and stage are kept between conversations.
        assert_eq!(p.durable().problem, None);
        assert_eq!(
            restate(&"word ".repeat(20)).split_whitespace().count(),
            RESTATE_WORDS
        );
    }

    /// `restate` as first written: a string per word, joined.
    fn restate_as_first_written(sentence: &str) -> String {
        let words: Vec<String> = sentence
            .split_whitespace()
            .map(|w| {
                let lower = w.to_lowercase();
                second_person(&lower).map_or(lower, str::to_owned)
            })
            .collect();
        let mut text = words
            .iter()
            .take(RESTATE_WORDS)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        if words.len() > RESTATE_WORDS {
            text.push_str("...");
        }
        text
    }

    #[test]
    fn a_clause_is_restated_as_first_written() {
        let long = "We tried adding two more engineers to our on-call rotation, \
                    but I think the pages keep coming and my team is tired";
        for sentence in [
            "",
            "   ",
            "I'm the CTO",
            "We, our team: my reports and I've had enough",
            "ΣΟΦΙΑ and İ think WE'RE late",
            long,
            &long[..40],
        ] {
            for cut in 0..=sentence.split_whitespace().count() + 1 {
                let words: Vec<&str> = sentence.split_whitespace().take(cut).collect();
                let clause = words.join("  ");
                assert_eq!(
                    restate(&clause),
                    restate_as_first_written(&clause),
                    "{clause:?}"
                );
            }
        }
    }

    /// The definition `words` had before it was made one pass.
    fn words_as_first_written(text: &str) -> String {
        let chars: Vec<char> = text.to_lowercase().chars().collect();
        let keep = |i: usize| {
            let c = chars[i];
            let digit_at = |j: Option<usize>| {
                j.and_then(|j| chars.get(j))
                    .is_some_and(char::is_ascii_digit)
            };
            c.is_alphanumeric()
                || matches!(c, '-' | '+' | '\'')
                || (c == ':' && digit_at(i.checked_sub(1)) && digit_at(Some(i + 1)))
        };
        let spaced: String = (0..chars.len())
            .map(|i| if keep(i) { chars[i] } else { ' ' })
            .collect();
        format!(
            " {} ",
            spaced.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    }

    #[test]
    fn words_is_what_it_was_as_first_written() {
        let samples = [
            "",
            " ",
            "...",
            "We're 40 engineers at Series B; our CTO left.",
            "1:1s with me: do they help? 12:30, a:b, 3: 4, :5, 6:",
            "  tabs\tand\nnewlines  ",
            "C++ and e-mail -- and 'quotes'",
            "İstanbul ÉQUIPE straße ΣΊΣΥΦΟΣ",
            "emoji 🙂 between, and ① ② digits",
        ];
        for text in samples {
            assert_eq!(words(text), words_as_first_written(text), "{text:?}");
        }
        // Every pair of characters from a mixed alphabet, to cover the
        // boundaries (a digit either side of a colon, runs of separators).
        let alphabet: Vec<char> = "a1: -+'.\tÉİ9".chars().collect();
        for a in &alphabet {
            for b in &alphabet {
                for c in &alphabet {
                    let text: String = [*a, *b, *c].iter().collect();
                    assert_eq!(words(&text), words_as_first_written(&text), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn reading_turns_together_is_reading_them_one_by_one() {
        let turns = [
            "I'm an EM of 8 engineers. Our problem is that on-call is burning people out.",
            "We tried a follow-the-sun rotation; it didn't stick.",
            "Budget is frozen until Q3. Also releases are slow and painful.",
            "We're series B now, 40 engineers. We tried pairing new hires with seniors.",
            "The deadline is the board meeting. The struggle is hiring.",
        ];
        let together = ContextProfile::from_turns(turns);
        let mut one_by_one = ContextProfile::default();
        for turn in turns {
            one_by_one.absorb_all([turn]);
        }
        assert_eq!(together, one_by_one);
        // What it read: the latest attempt and constraint, the first problem.
        assert!(
            together
                .tried
                .as_deref()
                .is_some_and(|t| t.contains("pairing")),
            "{together:?}"
        );
        assert!(together.problem.is_some(), "{together:?}");
        assert!(together.constraint.is_some(), "{together:?}");
    }

    /// The profile as it was read before turns were read into facts: each
    /// turn's clauses found and applied in one pass.
    fn absorbed_as_first_written(profile: &mut ContextProfile, turns: &[&str]) {
        let mut clauses = Clauses::default();
        for turn in turns {
            let lower = words(turn);
            let [role, stage, attempt, nothing] = TURN_PATTERNS.first_listed_in(&lower);
            if let Some(i) = role {
                profile.role = Some(ROLES[i].1);
            }
            if let Some(i) = stage {
                profile.stage = Some(STAGES[i].1);
            }
            if let Some(size) = team_size(&lower) {
                profile.team_size = Some(size);
            }
            if attempt.is_some() {
                profile.mentioned_attempts = true;
                profile.nothing_tried = false;
            }
            let mut tried_here = None;
            for sentence in turn
                .split(['.', '!', '?', ';', '\n'])
                .map(str::trim)
                .filter(|s| s.split_whitespace().count() >= 3)
            {
                let [attempt, constraint, problem] =
                    SENTENCE_PATTERNS.first_listed_in(&sentence.to_lowercase());
                if attempt.is_some() {
                    clauses.tried = Some(sentence);
                    tried_here = Some(sentence);
                } else if constraint.is_some() {
                    clauses.constraint = Some(sentence);
                } else if profile.problem.is_none()
                    && clauses.problem.is_none()
                    && problem.is_some()
                {
                    clauses.problem = Some(sentence);
                }
            }
            if attempt.is_none() && tried_here.is_none() && nothing.is_some() {
                profile.mentioned_attempts = true;
                profile.nothing_tried = true;
                profile.tried = None;
                clauses.tried = None;
            }
        }
        if let Some(tried) = clauses.tried {
            profile.tried = Some(restate(tried));
        }
        if let Some(constraint) = clauses.constraint {
            profile.constraint = Some(restate(constraint));
        }
        if let Some(problem) = clauses.problem {
            profile.problem = Some(restate(problem));
        }
    }

    /// Facts read once and kept give the profile reading the turns gave:
    /// every sequence of up to four turns from a pool whose turns name
    /// several problems, attempts and constraints each (or none), from an
    /// empty profile and from one that knows a problem already.
    #[test]
    fn facts_read_once_make_the_profile_the_turns_made() {
        let pool = [
            "I'm an EM of 8 engineers. Our problem is that on-call is burning people out.",
            "We tried a follow-the-sun rotation; it didn't stick. We tried pairing too.",
            "Budget is frozen until Q3. The deadline is fixed. Also releases are slow and painful.",
            "We're series B now, 40 engineers. The struggle is hiring; the problem is churn.",
            "ok",
            "Nothing new to add here today, thanks",
            "Als CTO von 30 Ingenieuren: WE TRIED A REORG. Ça n'a pas marché, the budget is tight.",
            "We are a public company with 900 engineers and I'm the VP of Engineering.",
            "Honestly we haven't tried anything yet. It keeps failing.",
        ];
        let knows_a_problem = ContextProfile {
            problem: Some("you said it before".to_owned()),
            role: Some("director"),
            ..ContextProfile::default()
        };
        let facts: Vec<TurnFacts> = pool.iter().map(|turn| TurnFacts::read(turn)).collect();
        let mut sequences: Vec<Vec<usize>> = vec![vec![]];
        for _ in 0..4 {
            let longer: Vec<Vec<usize>> = sequences
                .iter()
                .filter(|s| s.len() == sequences.last().map_or(0, Vec::len))
                .flat_map(|s| {
                    (0..pool.len()).map(move |i| {
                        let mut next = s.clone();
                        next.push(i);
                        next
                    })
                })
                .collect();
            sequences.extend(longer);
        }
        assert_eq!(sequences.len(), 1 + 9 + 81 + 729 + 6561);
        for start in [ContextProfile::default(), knows_a_problem] {
            for sequence in &sequences {
                let turns: Vec<&str> = sequence.iter().map(|&i| pool[i]).collect();
                let mut expected = start.clone();
                absorbed_as_first_written(&mut expected, &turns);
                let mut from_facts = start.clone();
                from_facts.absorb_facts(sequence.iter().map(|&i| &facts[i]));
                assert_eq!(from_facts, expected, "{turns:?}");
                let mut from_turns = start.clone();
                from_turns.absorb_all(turns.iter().copied());
                assert_eq!(from_turns, expected, "{turns:?}");
            }
        }
    }

    /// The automata find what the lists' `contains` found: the first
    /// pattern in list order, over texts built from the patterns' own
    /// words, run together, overlapping and apart.
    #[test]
    fn the_automata_match_as_the_lists_do() {
        let words: Vec<&str> = ROLES
            .iter()
            .map(|(p, _)| *p)
            .chain(STAGES.iter().map(|(p, _)| *p))
            .chain(ATTEMPTS.iter().copied())
            .chain(NOTHING_TRIED.iter().copied())
            .chain(CONSTRAINTS.iter().copied())
            .chain(PROBLEMS.iter().copied())
            .flat_map(|p| p.split(' '))
            .chain(["", " ", "of", "we", "the team", "x"])
            .collect();
        // Seeded: the same texts every run.
        let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
        let mut next = |n: usize| rng.usize(..n);
        let naive = |list: &[&str], text: &str| list.iter().position(|p| text.contains(p));
        let roles: Vec<&str> = ROLES.iter().map(|(p, _)| *p).collect();
        let stages: Vec<&str> = STAGES.iter().map(|(p, _)| *p).collect();
        let mut matched = 0;
        for _ in 0..5_000 {
            let parts = 1 + next(8);
            let mut text = String::from(" ");
            for _ in 0..parts {
                text.push_str(words[next(words.len())]);
                text.push_str([" ", "", "  ", "-"][next(4)]);
            }
            let turn = [
                naive(&roles, &text),
                naive(&stages, &text),
                naive(ATTEMPTS, &text),
                naive(NOTHING_TRIED, &text),
            ];
            assert_eq!(TURN_PATTERNS.first_listed_in(&text), turn, "{text:?}");
            let sentence = [
                naive(ATTEMPTS, &text),
                naive(CONSTRAINTS, &text),
                naive(PROBLEMS, &text),
            ];
            assert_eq!(
                SENTENCE_PATTERNS.first_listed_in(&text),
                sentence,
                "{text:?}"
            );
            // A sentence is read as written when it is ASCII: capitals
            // match as the lowered text would.
            let shouted = text.to_ascii_uppercase();
            assert_eq!(
                SENTENCE_PATTERNS.first_listed_in(&shouted),
                sentence,
                "{shouted:?}"
            );
            matched += turn.iter().chain(&sentence).filter(|i| i.is_some()).count();
        }
        assert!(matched > 1_000, "the texts exercise the lists: {matched}");
    }

    #[test]
    fn every_pattern_is_lower_case() {
        let roles = ROLES.iter().map(|(p, _)| *p);
        let stages = STAGES.iter().map(|(p, _)| *p);
        let lists = [ATTEMPTS, NOTHING_TRIED, CONSTRAINTS, PROBLEMS]
            .into_iter()
            .flatten()
            .copied();
        for pattern in roles.chain(stages).chain(lists) {
            assert_eq!(pattern, pattern.to_lowercase(), "{pattern:?}");
        }
    }

    #[test]
    fn team_size_forms() {
        assert_eq!(team_size(" a team of 12 "), Some(12));
        assert_eq!(team_size(" our 8-person team "), Some(8));
        assert_eq!(team_size(" we shipped 3 features "), None);
        assert_eq!(team_size(" 40 engineers "), Some(40));
        assert_eq!(team_size(" ~25 people "), Some(25));
        assert_eq!(team_size(" team of "), None);
        assert_eq!(team_size(" of 12 "), None);
        assert_eq!(team_size(" the team of 12 and 3 engineers "), Some(12));
    }

    #[test]
    fn later_turns_refine_and_attempts_are_noticed() {
        let p = ContextProfile::from_turns([
            "we are 10 engineers",
            "now 14 engineers; we tried a guild",
        ]);
        assert_eq!(p.team_size, Some(14));
        assert!(p.mentioned_attempts);
        assert!(!p.is_sufficient());
        assert_eq!(p.missing_context().len(), 1);
    }

    #[test]
    fn nothing_tried_answers_the_question_and_is_the_latest_word() {
        for said in [
            "We haven't tried anything yet.",
            "Nothing yet.",
            "Honestly, nothing yet",
            "We have not tried anything, the team of 12 is new.",
            "I haven\u{2019}t tried anything",
        ] {
            let p = ContextProfile::from_turns(["I'm a director of 60 engineers.", said]);
            assert!(p.nothing_tried, "{said:?}");
            assert!(p.missing_context().is_empty(), "{said:?}: {p:?}");
            let summary = p.summary().unwrap_or_default();
            assert!(summary.contains("nothing tried yet"), "{summary}");
            assert!(!summary.contains("at least one fix"), "{summary}");
        }
        // Not an answer about attempts in general.
        for not_none in [
            "We haven't tried pairing yet.",
            "Nothing so far has worked.",
        ] {
            let p = ContextProfile::from_turns([not_none]);
            assert!(!p.mentioned_attempts && !p.nothing_tried, "{not_none:?}");
        }
        // The latest word wins, either way round.
        let then_tried = ContextProfile::from_turns(["Nothing yet.", "We tried a guild since."]);
        assert!(!then_tried.nothing_tried);
        assert!(
            then_tried
                .tried
                .as_deref()
                .is_some_and(|t| t.contains("guild"))
        );
        let then_nothing =
            ContextProfile::from_turns(["We tried a guild last year.", "Nothing yet, really."]);
        assert!(then_nothing.nothing_tried && then_nothing.tried.is_none());
    }
}
