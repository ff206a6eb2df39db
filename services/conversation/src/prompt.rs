//! What a model is told for one turn. Pure.

use tp_coach::{ContextProfile, FrameworkRef};
use tp_llm::{ChatMessage, ChatRequest, Role};

/// The customer's persona specification, used as the system prompt.
pub const PERSONA: &str = include_str!("../prompt/persona.md");

/// A passage of the tenant's own documents, for a model's grounding.
pub struct DocumentPassage {
    pub document_title: String,
    pub heading: String,
    pub snippet: String,
}

/// A rough token count (about four characters a token for English), good
/// enough to keep a transcript inside a budget.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// The system prompt (persona, grounding with citations, what is known of
/// the user) and as much transcript as fits `budget_tokens`: the oldest turns
/// are dropped first, the current message always goes.
pub fn build(
    frameworks: &[FrameworkRef],
    passages: &[DocumentPassage],
    profile: &ContextProfile,
    transcript: &[ChatMessage],
    message: &str,
    budget_tokens: usize,
    max_tokens: u32,
) -> ChatRequest {
    let mut system = String::from(PERSONA);
    if !frameworks.is_empty() {
        system.push_str("\n\n## Grounding for this turn\nUse these where they genuinely apply, and cite them:\n");
        for f in frameworks {
            system.push_str(&format!(
                "- {} ({}): {} Source: {}\n",
                f.name, f.author, f.application, f.source_url
            ));
        }
    }
    if !passages.is_empty() {
        system.push_str("\n## From the organisation's own documents\nCite the document by title when you use one:\n");
        for p in passages {
            let place = if p.heading.is_empty() {
                p.document_title.clone()
            } else {
                format!("{} — {}", p.document_title, p.heading)
            };
            system.push_str(&format!("- [{place}] {}\n", p.snippet));
        }
    }
    if let Some(summary) = profile.summary() {
        system.push_str(&format!("\n## What the user has told you\n{summary}.\n"));
    }
    let mut budget = budget_tokens.saturating_sub(estimate_tokens(message));
    let mut kept: Vec<ChatMessage> = Vec::new();
    for turn in transcript.iter().rev() {
        let cost = estimate_tokens(&turn.content);
        if cost > budget {
            break;
        }
        budget -= cost;
        kept.push(turn.clone());
    }
    kept.reverse();
    kept.push(ChatMessage {
        role: Role::User,
        content: message.to_owned(),
    });
    ChatRequest {
        system,
        messages: kept,
        max_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.to_owned(),
        }
    }

    #[test]
    fn the_oldest_turns_go_first_and_the_current_message_always_stays() {
        let transcript = vec![
            turn(Role::User, &"old ".repeat(100)),
            turn(Role::Assistant, &"reply ".repeat(20)),
            turn(Role::User, "recent"),
        ];
        let message = "now what?";
        let request = build(
            &[],
            &[],
            &ContextProfile::default(),
            &transcript,
            message,
            60,
            300,
        );
        let contents: Vec<&str> = request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(contents.last(), Some(&message));
        assert!(
            !contents.iter().any(|c| c.starts_with("old")),
            "the oldest turn is dropped"
        );
        assert!(contents.contains(&"recent"));
        // Even a budget of zero sends the current message.
        let tiny = build(
            &[],
            &[],
            &ContextProfile::default(),
            &transcript,
            message,
            0,
            300,
        );
        assert_eq!(tiny.messages.len(), 1);
    }

    #[test]
    fn the_system_prompt_carries_persona_grounding_and_context() {
        let framework = FrameworkRef {
            framework_id: "staff-archetypes".into(),
            name: "Staff Archetypes".into(),
            author: "Will Larson".into(),
            application: "Four shapes.".into(),
            diagnostic_question: "Which shape?".into(),
            source_url: "https://staffeng.com".into(),
        };
        let profile = ContextProfile::from_turns(["I'm the CTO of 30 engineers."]);
        let passage = DocumentPassage {
            document_title: "Strategy 2027".into(),
            heading: "Reliability".into(),
            snippet: "Every tier-one service keeps an error budget.".into(),
        };
        let request = build(&[framework], &[passage], &profile, &[], "hi", 1000, 300);
        assert!(request.system.contains(
            "[Strategy 2027 — Reliability] Every tier-one service keeps an error budget."
        ));
        assert!(
            request
                .system
                .starts_with("# Engineering Leader Thought Partner")
        );
        assert!(
            request.system.contains(
                "Staff Archetypes (Will Larson): Four shapes. Source: https://staffeng.com"
            )
        );
        assert!(request.system.contains("about 30 engineers"));
    }
}
