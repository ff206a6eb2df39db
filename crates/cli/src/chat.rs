//! `tp chat`: an interactive session with the thought partner. The reply
//! streams as it arrives, a spinner turns while the first words are on
//! their way, arrow keys walk back through what you typed (rustyline), and
//! `--conversation ID` resumes an earlier conversation, its last turns
//! shown first. `/again` asks for another reply to the last turn
//! (RegenerateReply) and `/edit TEXT` replaces the last turn (EditMessage);
//! neither overwrites anything, both go on from the new branch. A turn
//! that fails for a moment (`Unavailable`) is retried with the same
//! idempotency key, so it is never stored twice.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tonic::transport::Channel;
use tp_proto::v1 as pb;

use crate::{ConversationClient, authorized, create_conversation};

const PROMPT: &str = "you> ";
const REPLY: &str = "partner> ";
/// Turns of a resumed conversation shown before the prompt.
const RESUME_TURNS: usize = 6;
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const RETRIES: u32 = 3;

pub async fn chat(channel: Channel, token: &str, resume: Option<String>) -> anyhow::Result<()> {
    let mut client = ConversationClient::new(channel);
    // The last exchange on the branch: what /again and /edit act on.
    let (conversation_id, mut last) = match resume {
        Some(id) => {
            let last = show_recent(&mut client, &id, token).await?;
            (id, last)
        }
        None => (create_conversation(&mut client, "", token).await?, None),
    };
    println!(
        "Conversation {conversation_id}. Ask away; /again asks for another reply, /edit TEXT \
         replaces your last turn, /id shows the id, /quit (or Ctrl-D) ends."
    );
    let mut editor = DefaultEditor::new().context("cannot read from this terminal")?;
    loop {
        let line = match tokio::task::block_in_place(|| editor.readline(PROMPT)) {
            Ok(line) => line,
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => break,
            Err(e) => return Err(e.into()),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        let ask = match parse_line(line) {
            Line::Quit => break,
            Line::Id => {
                println!("{conversation_id}");
                continue;
            }
            Line::Ask(ask) => ask,
            Line::Usage(usage) => {
                eprintln!("tp: {usage}");
                continue;
            }
        };
        let Some(request) = ask.request(&conversation_id, last.as_ref()) else {
            eprintln!("tp: there is no turn yet to answer again or edit; type your question");
            continue;
        };
        match turn(&mut client, &request, token).await {
            Ok(completed) => last = Some(completed),
            // The session goes on: the next turn may well work.
            Err(e) => eprintln!("tp: {}", crate::browse::sentence(&e)),
        }
    }
    Ok(())
}

/// What a line typed at the prompt asks for.
#[derive(Debug, PartialEq)]
enum Line<'a> {
    Quit,
    Id,
    Ask(Ask<'a>),
    /// A command typed wrongly: how to type it.
    Usage(&'static str),
}

#[derive(Debug, PartialEq)]
enum Ask<'a> {
    /// A new turn.
    Send(&'a str),
    /// Another reply to the last turn.
    Again,
    /// The last turn, replaced.
    Edit(&'a str),
}

fn parse_line(line: &str) -> Line<'_> {
    match line {
        "/quit" | "/exit" => Line::Quit,
        "/id" => Line::Id,
        "/again" => Line::Ask(Ask::Again),
        "/edit" => Line::Usage("/edit needs the new text: /edit We are 12 engineers, not 40."),
        _ => match line.strip_prefix("/edit ") {
            Some(text) if !text.trim().is_empty() => Line::Ask(Ask::Edit(text.trim())),
            Some(_) => Line::Usage("/edit needs the new text: /edit We are 12 engineers, not 40."),
            None => Line::Ask(Ask::Send(line)),
        },
    }
}

/// One request, with the idempotency key its retries share.
enum Request {
    Send(pb::SendMessageRequest),
    Edit(pb::EditMessageRequest),
    Again(pb::RegenerateReplyRequest),
}

impl Ask<'_> {
    /// The request; `None` when it needs a last exchange and there is none.
    fn request(
        &self,
        conversation_id: &str,
        last: Option<&pb::MessageCompleted>,
    ) -> Option<Request> {
        let idempotency_key = uuid::Uuid::new_v4().to_string();
        let last_id = |m: &Option<pb::Message>| m.as_ref().map(|m| m.message_id.clone());
        Some(match self {
            Ask::Send(content) => Request::Send(pb::SendMessageRequest {
                conversation_id: conversation_id.to_owned(),
                content: (*content).to_owned(),
                idempotency_key,
                ..Default::default()
            }),
            Ask::Again => Request::Again(pb::RegenerateReplyRequest {
                message_id: last_id(&last?.user_message)?,
                idempotency_key,
            }),
            Ask::Edit(content) => Request::Edit(pb::EditMessageRequest {
                message_id: last_id(&last?.user_message)?,
                content: (*content).to_owned(),
                idempotency_key,
            }),
        })
    }
}

/// The last turns of a conversation being resumed, and its last exchange.
async fn show_recent(
    client: &mut ConversationClient,
    id: &str,
    token: &str,
) -> anyhow::Result<Option<pb::MessageCompleted>> {
    let messages = crate::browse::messages(client, id, token).await?;
    let skip = messages.len().saturating_sub(RESUME_TURNS);
    for message in &messages[skip..] {
        let who = if message.role == i32::from(pb::MessageRole::User) {
            PROMPT
        } else {
            REPLY
        };
        println!("{who}{}", message.content);
    }
    let is_user = |m: &pb::Message| m.role == i32::from(pb::MessageRole::User);
    let user_message = messages.iter().rev().find(|m| is_user(m)).cloned();
    Ok(user_message.map(|user| pb::MessageCompleted {
        user_message: Some(user),
        assistant_message: messages.last().filter(|m| !is_user(m)).cloned(),
    }))
}

/// Sends one request and streams the reply, retrying a moment's outage
/// with the same key.
async fn turn(
    client: &mut ConversationClient,
    request: &Request,
    token: &str,
) -> anyhow::Result<pb::MessageCompleted> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match stream_reply(client, request, token).await {
            Err(e)
                if attempt < RETRIES
                    && e.downcast_ref::<tonic::Status>()
                        .is_some_and(|s| s.code() == tonic::Code::Unavailable) =>
            {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            done => return done,
        }
    }
}

async fn stream_reply(
    client: &mut ConversationClient,
    request: &Request,
    token: &str,
) -> anyhow::Result<pb::MessageCompleted> {
    let spinner = Spinner::start();
    match request {
        Request::Send(r) => {
            let stream = client.send_message(authorized(r.clone(), token)?).await?;
            show_reply(spinner, stream.into_inner()).await
        }
        Request::Edit(r) => {
            let stream = client.edit_message(authorized(r.clone(), token)?).await?;
            show_reply(spinner, stream.into_inner()).await
        }
        Request::Again(r) => {
            let stream = client
                .regenerate_reply(authorized(r.clone(), token)?)
                .await?;
            show_reply(spinner, stream.into_inner()).await
        }
    }
}

/// Prints the reply as it arrives; the completed exchange at the end.
async fn show_reply<T: tp_proto::ReplyEvent>(
    spinner: Spinner,
    mut stream: tonic::Streaming<T>,
) -> anyhow::Result<pb::MessageCompleted> {
    let mut spinner = Some(spinner);
    let mut stdout = std::io::stdout();
    let mut completed = None;
    while let Some(event) = stream.message().await? {
        match event.into_part() {
            tp_proto::ReplyPart::Delta(text) => {
                if let Some(spinner) = spinner.take() {
                    spinner.stop().await;
                    write!(stdout, "{REPLY}")?;
                }
                write!(stdout, "{text}")?;
                stdout.flush()?;
            }
            tp_proto::ReplyPart::Completed(done) => completed = Some(*done),
            tp_proto::ReplyPart::Empty => {}
        }
    }
    if let Some(spinner) = spinner.take() {
        spinner.stop().await;
    }
    writeln!(stdout)?;
    completed.ok_or_else(|| anyhow::anyhow!("the reply ended without its completed event"))
}

/// "⠋ thinking…" on stderr until the first words arrive, when stderr is a
/// terminal; nothing otherwise.
struct Spinner(Option<tokio::task::JoinHandle<()>>);

impl Spinner {
    fn start() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        Self(Some(tokio::spawn(async {
            let mut frame = 0;
            loop {
                eprint!("\r{} thinking…", SPINNER[frame % SPINNER.len()]);
                frame += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })))
    }

    async fn stop(self) {
        if let Some(task) = self.0 {
            task.abort();
            // Once it has stopped, clear its line.
            let _ = task.await;
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_turns_or_commands() {
        assert_eq!(parse_line("/quit"), Line::Quit);
        assert_eq!(parse_line("/again"), Line::Ask(Ask::Again));
        assert_eq!(
            parse_line("/edit  We are 12. "),
            Line::Ask(Ask::Edit("We are 12."))
        );
        assert!(matches!(parse_line("/edit"), Line::Usage(_)));
        assert!(matches!(parse_line("/edit   "), Line::Usage(_)));
        assert_eq!(
            parse_line("/editorial teams?"),
            Line::Ask(Ask::Send("/editorial teams?"))
        );
    }

    #[test]
    fn again_and_edit_need_a_last_turn() {
        assert!(Ask::Again.request("c", None).is_none());
        assert!(Ask::Edit("x").request("c", None).is_none());
        let last = pb::MessageCompleted {
            user_message: Some(pb::Message {
                message_id: "u1".into(),
                ..Default::default()
            }),
            assistant_message: None,
        };
        match Ask::Again.request("c", Some(&last)) {
            Some(Request::Again(r)) => assert_eq!(r.message_id, "u1"),
            _ => panic!("a RegenerateReply of the last turn"),
        }
        match Ask::Edit("new").request("c", Some(&last)) {
            Some(Request::Edit(r)) => {
                assert_eq!((r.message_id.as_str(), r.content.as_str()), ("u1", "new"))
            }
            _ => panic!("an EditMessage of the last turn"),
        }
        match Ask::Send("hi").request("c", None) {
            Some(Request::Send(r)) => assert_eq!(r.conversation_id, "c"),
            _ => panic!("a SendMessage"),
        }
    }
}
