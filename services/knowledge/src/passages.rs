//! Splitting a tenant document into searchable passages. Pure.

/// Longest passage; longer paragraphs are cut at word boundaries.
pub const MAX_PASSAGE_CHARS: usize = 1500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passage {
    /// The nearest Markdown heading above ("" for plain text or none).
    pub heading: String,
    pub text: String,
}

/// Splits at paragraphs (blank lines); Markdown headings start a new
/// section and label the passages under them, and fenced code blocks stay
/// whole.
pub fn split(content: &str, markdown: bool) -> Vec<Passage> {
    let mut passages = Vec::new();
    let mut heading = String::new();
    let mut paragraph: Vec<&str> = Vec::new();
    let mut in_fence = false;

    let flush = |paragraph: &mut Vec<&str>, heading: &str, passages: &mut Vec<Passage>| {
        let text = paragraph.join("\n").trim().to_owned();
        paragraph.clear();
        for piece in cut(&text) {
            passages.push(Passage {
                heading: heading.to_owned(),
                text: piece,
            });
        }
    };

    for line in content.lines() {
        let trimmed = line.trim();
        if markdown && trimmed.starts_with("```") {
            in_fence = !in_fence;
            paragraph.push(line);
            continue;
        }
        if in_fence {
            paragraph.push(line);
            continue;
        }
        if markdown && trimmed.starts_with('#') {
            let title = trimmed.trim_start_matches('#');
            if title.is_empty() || title.starts_with(' ') {
                flush(&mut paragraph, &heading, &mut passages);
                heading = title.trim().to_owned();
                continue;
            }
        }
        if trimmed.is_empty() {
            flush(&mut paragraph, &heading, &mut passages);
        } else {
            paragraph.push(line);
        }
    }
    flush(&mut paragraph, &heading, &mut passages);
    passages
}

/// Cuts text into pieces of at most [`MAX_PASSAGE_CHARS`] characters at
/// whitespace (or mid-word when a single word is longer).
fn cut(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if rest.chars().count() <= MAX_PASSAGE_CHARS {
            pieces.push(rest.to_owned());
            break;
        }
        let limit = rest
            .char_indices()
            .nth(MAX_PASSAGE_CHARS)
            .map_or(rest.len(), |(i, _)| i);
        let end = rest[..limit]
            .rfind(char::is_whitespace)
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        pieces.push(rest[..end].trim().to_owned());
        rest = rest[end..].trim_start();
    }
    pieces.retain(|p| !p.is_empty());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_splits_at_headings_and_paragraphs() {
        let doc = "# Strategy\n\nWe invest in reliability.\nIt matters.\n\n## Hiring\n\nWe hire seniors first.\n\nThen juniors.";
        let passages = split(doc, true);
        assert_eq!(passages.len(), 3);
        assert_eq!(passages[0].heading, "Strategy");
        assert_eq!(passages[0].text, "We invest in reliability.\nIt matters.");
        assert_eq!(passages[1].heading, "Hiring");
        assert_eq!(passages[2].text, "Then juniors.");
    }

    #[test]
    fn plain_text_keeps_hashes_and_fences_stay_whole() {
        let passages = split("# not a heading\n\nsecond", false);
        assert_eq!(passages[0].text, "# not a heading");
        assert_eq!(passages[0].heading, "");
        let fenced = split("```\na\n\nb\n```\n\nafter", true);
        assert_eq!(fenced.len(), 2);
        assert!(fenced[0].text.contains("a\n\nb"));
    }

    #[test]
    fn long_paragraphs_are_cut_at_words_without_losing_text() {
        let long = "word ".repeat(1000);
        let passages = split(&long, false);
        assert!(passages.len() >= 3);
        assert!(
            passages
                .iter()
                .all(|p| p.text.chars().count() <= MAX_PASSAGE_CHARS)
        );
        let words: usize = passages
            .iter()
            .map(|p| p.text.split_whitespace().count())
            .sum();
        assert_eq!(words, 1000);
        let unbroken = "x".repeat(4000);
        assert_eq!(split(&unbroken, false).len(), 3);
    }

    #[test]
    fn empty_content_has_no_passages() {
        assert!(split("\n\n  \n", true).is_empty());
    }
}
