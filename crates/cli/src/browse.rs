//! Reading what is there: `tp conversations list | show | export | delete`,
//! `tp search`, `tp frameworks`. Text for people, `--output json` for
//! scripts (one JSON document on stdout, nothing else).

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tp_proto::v1 as pb;

use crate::{ConversationClient, authorized};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Markdown,
    Json,
}

#[derive(Subcommand)]
pub enum ConversationsCommand {
    /// Your conversations, newest first.
    List {
        /// How many (1..=100).
        #[arg(long, default_value_t = 50)]
        limit: i32,
    },
    /// A conversation's transcript: its active branch, or with --branch
    /// the one through that message. Turns with other versions (edits,
    /// replies asked for again) say so, with their ids.
    Show {
        id: String,
        /// A message id: show the branch through it.
        #[arg(long)]
        branch: Option<String>,
    },
    /// A conversation as Markdown or JSON, to keep or share.
    Export {
        id: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Markdown)]
        format: ExportFormat,
    },
    /// Delete a conversation and its transcript.
    Delete { id: String },
    /// Find words in your past conversations (or, for admins whose
    /// organisation allows it, everyone's with --organisation).
    Search {
        query: String,
        /// How many hits (1..=50).
        #[arg(long, default_value_t = 20)]
        limit: i32,
        #[arg(long)]
        organisation: bool,
    },
}

/// " (other versions: ID, …)" for a message with siblings, else nothing:
/// what `--branch ID` shows instead.
fn versions(m: &pb::Message) -> String {
    if m.sibling_message_ids.is_empty() {
        String::new()
    } else {
        format!(" (other versions: {})", m.sibling_message_ids.join(", "))
    }
}

/// A snippet with its matched words in [brackets].
pub fn bracketed(snippet: &str, highlights: &[pb::TextRange]) -> String {
    let mut out = String::with_capacity(snippet.len() + 4 * highlights.len());
    for (i, c) in snippet.chars().enumerate() {
        let at = i as i32;
        if highlights.iter().any(|r| r.start == at) {
            out.push('[');
        }
        out.push(c);
        if highlights.iter().any(|r| r.end == at + 1) {
            out.push(']');
        }
    }
    out
}

pub fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn role(message: &pb::Message) -> &'static str {
    match pb::MessageRole::try_from(message.role) {
        Ok(pb::MessageRole::User) => "user",
        Ok(pb::MessageRole::Assistant) => "assistant",
        _ => "unknown",
    }
}

fn conversation_json(c: &pb::Conversation) -> Value {
    json!({
        "conversation_id": c.conversation_id,
        "title": c.title,
        "create_time": time(c.create_time.as_ref()),
        "update_time": time(c.update_time.as_ref()),
    })
}

fn message_json(m: &pb::Message) -> Value {
    json!({
        "message_id": m.message_id,
        "parent_message_id": m.parent_message_id,
        "other_versions": m.sibling_message_ids,
        "role": role(m),
        "content": m.content,
        "create_time": time(m.create_time.as_ref()),
    })
}

/// A conversation and every message of it.
async fn transcript(
    client: &mut ConversationClient,
    id: &str,
    branch: Option<&str>,
    token: &str,
) -> anyhow::Result<(pb::Conversation, Vec<pb::Message>)> {
    let conversation = client
        .get_conversation(authorized(
            pb::GetConversationRequest {
                conversation_id: id.to_owned(),
            },
            token,
        )?)
        .await?
        .into_inner()
        .conversation
        .context("GetConversation returned no conversation")?;
    Ok((
        conversation,
        branch_messages(client, id, branch, token).await?,
    ))
}

/// The active branch of a conversation, oldest first, page by page.
pub async fn messages(
    client: &mut ConversationClient,
    id: &str,
    token: &str,
) -> anyhow::Result<Vec<pb::Message>> {
    branch_messages(client, id, None, token).await
}

/// A branch of a conversation (the active one, or the one through
/// `branch`), oldest first, page by page.
async fn branch_messages(
    client: &mut ConversationClient,
    id: &str,
    branch: Option<&str>,
    token: &str,
) -> anyhow::Result<Vec<pb::Message>> {
    let mut messages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_messages(authorized(
                pb::ListMessagesRequest {
                    conversation_id: id.to_owned(),
                    page_size: 100,
                    page_token: page_token.clone(),
                    branch_id: branch.unwrap_or_default().to_owned(),
                },
                token,
            )?)
            .await?
            .into_inner();
        messages.extend(page.messages);
        if page.next_page_token.is_empty() {
            return Ok(messages);
        }
        page_token = page.next_page_token;
    }
}

pub async fn conversations(
    channel: Channel,
    token: &str,
    command: ConversationsCommand,
    output: Output,
) -> anyhow::Result<()> {
    let mut client = ConversationClient::new(channel);
    match command {
        ConversationsCommand::List { limit } => {
            let list = client
                .list_conversations(authorized(
                    pb::ListConversationsRequest {
                        page_size: limit,
                        page_token: String::new(),
                    },
                    token,
                )?)
                .await?
                .into_inner();
            match output {
                Output::Json => println!(
                    "{}",
                    Value::Array(list.conversations.iter().map(conversation_json).collect())
                ),
                Output::Text if list.conversations.is_empty() => {
                    println!("No conversations yet: `tp send \"...\"` starts one.")
                }
                Output::Text => {
                    for c in &list.conversations {
                        let title = if c.title.is_empty() {
                            "(untitled)"
                        } else {
                            &c.title
                        };
                        println!(
                            "{}  {}  {title}",
                            c.conversation_id,
                            time(c.update_time.as_ref())
                        );
                    }
                }
            }
        }
        ConversationsCommand::Show { id, branch } => {
            let (conversation, messages) =
                transcript(&mut client, &id, branch.as_deref(), token).await?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "conversation": conversation_json(&conversation),
                        "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
                    })
                ),
                Output::Text => {
                    for m in &messages {
                        let who = if role(m) == "user" {
                            "you"
                        } else {
                            "thought partner"
                        };
                        println!("[{who}]{}\n{}\n", versions(m), m.content);
                    }
                }
            }
        }
        ConversationsCommand::Export { id, format } => {
            // The service renders the document; the CLI only writes it out,
            // chunk by chunk as it arrives.
            let mut chunks = client
                .export_conversation(authorized(
                    pb::ExportConversationRequest {
                        conversation_id: id,
                        format: match format {
                            ExportFormat::Markdown => pb::ExportFormat::Markdown,
                            ExportFormat::Json => pb::ExportFormat::Json,
                        }
                        .into(),
                    },
                    token,
                )?)
                .await?
                .into_inner();
            let mut stdout = std::io::stdout().lock();
            while let Some(chunk) = chunks.message().await? {
                std::io::Write::write_all(&mut stdout, &chunk.data)?;
            }
            std::io::Write::flush(&mut stdout)?;
        }
        ConversationsCommand::Search {
            query,
            limit,
            organisation,
        } => {
            let scope = if organisation {
                pb::SearchScope::Organisation
            } else {
                pb::SearchScope::Own
            };
            let hits = client
                .search_messages(authorized(
                    pb::SearchMessagesRequest {
                        query,
                        page_size: limit,
                        page_token: String::new(),
                        scope: scope.into(),
                    },
                    token,
                )?)
                .await?
                .into_inner()
                .hits;
            match output {
                Output::Json => println!(
                    "{}",
                    Value::Array(
                        hits.iter()
                            .map(|h| json!({
                                "conversation_id": h.conversation_id,
                                "conversation_title": h.conversation_title,
                                "message_id": h.message_id,
                                "user_id": h.user_id,
                                "snippet": h.snippet,
                                "create_time": time(h.create_time.as_ref()),
                            }))
                            .collect()
                    )
                ),
                Output::Text if hits.is_empty() => println!("Nothing found."),
                Output::Text => {
                    for h in &hits {
                        println!(
                            "{}  {}  {}\n  {}\n",
                            h.conversation_id,
                            time(h.create_time.as_ref()),
                            h.conversation_title,
                            bracketed(&h.snippet, &h.highlights)
                        );
                    }
                }
            }
        }
        ConversationsCommand::Delete { id } => {
            client
                .delete_conversation(authorized(
                    pb::DeleteConversationRequest {
                        conversation_id: id.clone(),
                    },
                    token,
                )?)
                .await?;
            match output {
                Output::Json => println!("{}", json!({ "deleted": id })),
                Output::Text => println!("Deleted conversation {id}."),
            }
        }
    }
    Ok(())
}

pub async fn search(
    channel: Channel,
    token: &str,
    query: String,
    limit: i32,
    output: Output,
) -> anyhow::Result<()> {
    let results = pb::knowledge_service_client::KnowledgeServiceClient::new(channel)
        .search(authorized(
            pb::SearchRequest {
                query,
                limit,
                kinds: Vec::new(),
            },
            token,
        )?)
        .await?
        .into_inner()
        .results;
    match output {
        Output::Json => println!(
            "{}",
            Value::Array(
                results
                    .iter()
                    .map(|r| json!({
                        "kind": pb::EntryKind::try_from(r.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN"),
                        "entry_id": r.entry_id,
                        "title": r.title,
                        "snippet": r.snippet,
                        "score": r.score,
                    }))
                    .collect()
            )
        ),
        Output::Text if results.is_empty() => println!("Nothing found."),
        Output::Text => {
            for r in &results {
                println!("{}  ({})\n    {}\n", r.title, r.entry_id, r.snippet);
            }
        }
    }
    Ok(())
}

pub async fn frameworks(channel: Channel, token: &str, output: Output) -> anyhow::Result<()> {
    let frameworks = pb::knowledge_service_client::KnowledgeServiceClient::new(channel)
        .list_frameworks(authorized(pb::ListFrameworksRequest {}, token)?)
        .await?
        .into_inner()
        .frameworks;
    match output {
        Output::Json => println!(
            "{}",
            Value::Array(
                frameworks
                    .iter()
                    .map(|f| json!({ "framework_id": f.framework_id, "title": f.title }))
                    .collect()
            )
        ),
        Output::Text => {
            for f in &frameworks {
                println!("{:<32} {}", f.framework_id, f.title);
            }
        }
    }
    Ok(())
}

/// An error as a sentence a person can act on, with the gRPC code when the
/// service refused the call.
pub fn sentence(error: &anyhow::Error) -> String {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        let what = match status.code() {
            tonic::Code::Unauthenticated => "The gateway did not accept your token",
            tonic::Code::PermissionDenied => "You are not allowed to do that",
            tonic::Code::NotFound => "Not found",
            tonic::Code::InvalidArgument => "The request was refused",
            tonic::Code::ResourceExhausted => "Over a limit",
            tonic::Code::FailedPrecondition => "Not possible now",
            tonic::Code::Unavailable => "The service is unavailable",
            _ => "The call failed",
        };
        return format!("{what}: {} ({:?}).", status.message(), status.code());
    }
    format!("{error:#}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matched_words_are_bracketed_by_code_point() {
        let ranges = [
            pb::TextRange { start: 2, end: 8 },
            pb::TextRange { start: 13, end: 16 },
        ];
        assert_eq!(
            bracketed("é hiring and fun", &ranges),
            "é [hiring] and [fun]"
        );
    }
}
