//! `tp chat`: an interactive session with the thought partner. The reply
//! streams as it arrives, a spinner turns while the first words are on
//! their way, arrow keys walk back through what you typed (rustyline), and
//! `--conversation ID` resumes an earlier conversation, its last turns
//! shown first. A turn that fails for a moment (`Unavailable`) is retried
//! with the same idempotency key, so it is never stored twice.

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
    let conversation_id = match resume {
        Some(id) => {
            show_recent(&mut client, &id, token).await?;
            id
        }
        None => create_conversation(&mut client, "", token).await?,
    };
    println!("Conversation {conversation_id}. Ask away; /id shows the id, /quit (or Ctrl-D) ends.");
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
        match line {
            "/quit" | "/exit" => break,
            "/id" => {
                println!("{conversation_id}");
                continue;
            }
            _ => {}
        }
        if let Err(e) = turn(&mut client, &conversation_id, line, token).await {
            // The session goes on: the next turn may well work.
            eprintln!("tp: {}", crate::browse::sentence(&e));
        }
    }
    Ok(())
}

/// The last turns of a conversation being resumed.
async fn show_recent(client: &mut ConversationClient, id: &str, token: &str) -> anyhow::Result<()> {
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
    Ok(())
}

/// Sends one turn and streams the reply, retrying a moment's outage with
/// the same key.
async fn turn(
    client: &mut ConversationClient,
    conversation_id: &str,
    content: &str,
    token: &str,
) -> anyhow::Result<()> {
    let key = uuid::Uuid::new_v4().to_string();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match stream_reply(client, conversation_id, content, &key, token).await {
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
    conversation_id: &str,
    content: &str,
    key: &str,
    token: &str,
) -> anyhow::Result<()> {
    let spinner = Spinner::start();
    let mut stream = client
        .send_message(authorized(
            pb::SendMessageRequest {
                conversation_id: conversation_id.to_owned(),
                content: content.to_owned(),
                idempotency_key: key.to_owned(),
                ..Default::default()
            },
            token,
        )?)
        .await?
        .into_inner();
    let mut spinner = Some(spinner);
    let mut stdout = std::io::stdout();
    while let Some(event) = stream.message().await? {
        if let Some(pb::send_message_response::Event::TextDelta(delta)) = event.event {
            if let Some(spinner) = spinner.take() {
                spinner.stop().await;
                write!(stdout, "{REPLY}")?;
            }
            write!(stdout, "{}", delta.text)?;
            stdout.flush()?;
        }
    }
    if let Some(spinner) = spinner.take() {
        spinner.stop().await;
    }
    writeln!(stdout)?;
    Ok(())
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
