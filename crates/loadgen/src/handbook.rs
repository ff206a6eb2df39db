//! Generated tenant handbooks: Markdown documents of 50 passages each, the
//! same text on every run, for the load generator's search scenario and the
//! knowledge search benchmark.

/// Passages per generated document.
pub const PASSAGES_PER_DOCUMENT: usize = 50;

/// A small deterministic generator, so every run loads the same text.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

const SUBJECTS: &[&str] = &[
    "The platform team",
    "Our on-call rotation",
    "The hiring committee",
    "Each staff engineer",
    "The reliability branch",
    "Product engineering",
    "The director group",
    "Every new manager",
    "The incident review",
    "Our promotion process",
    "The domain team",
    "The strategy doc",
];
const VERBS: &[&str] = &[
    "owns",
    "reviews",
    "measures",
    "reduces",
    "documents",
    "sponsors",
    "prioritises",
    "escalates",
    "instruments",
    "standardises",
    "budgets for",
    "retires",
];
const OBJECTS: &[&str] = &[
    "error budgets for tier-one services",
    "the career ladder for senior and staff levels",
    "deployment pipelines and developer productivity",
    "alert fatigue and noisy pages",
    "technical debt in the billing domain",
    "interview loops and closing candidates",
    "service level objectives per customer journey",
    "reorganisations and reporting lines",
    "the migration to the new data platform",
    "headcount plans for next quarter",
    "postmortems and follow-up actions",
    "architecture decisions across teams",
];

/// One sentence of leadership shop talk.
fn sentence(rng: &mut XorShift) -> String {
    format!(
        "{} {} {} ({} engineers, {} weeks). ",
        rng.pick(SUBJECTS),
        rng.pick(VERBS),
        rng.pick(OBJECTS),
        rng.next_u64() % 200 + 5,
        rng.next_u64() % 12 + 1
    )
}

/// A transcript turn of two to four such sentences, for the transcript
/// search benchmark.
pub fn message(rng: &mut XorShift) -> String {
    let sentences = 2 + rng.next_u64() % 3;
    (0..sentences)
        .map(|_| sentence(rng))
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// One handbook document of [`PASSAGES_PER_DOCUMENT`] passages (one per
/// paragraph), under a heading every ten.
pub fn document(rng: &mut XorShift, tenant: usize, number: usize) -> String {
    let mut text = format!("# Tenant {tenant} handbook, part {number}\n\n");
    for passage in 0..PASSAGES_PER_DOCUMENT {
        if passage % 10 == 0 {
            text.push_str(&format!("## Section {}\n\n", passage / 10 + 1));
        }
        for _ in 0..3 {
            text.push_str(&sentence(rng));
        }
        text.push_str("\n\n");
    }
    text
}
