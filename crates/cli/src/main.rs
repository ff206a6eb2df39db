//! `tp`: mint development tokens and talk to the gateway from a terminal.

mod admin;
mod browse;
mod chat;
mod login;
mod slo;

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use tp_auth::{Claims, mint_hs256};
use tp_context::{Role, TenantId};
use tp_proto::v1 as pb;

#[derive(Parser)]
#[command(name = "tp", about = "Thoughtpartner command-line client")]
struct Cli {
    /// Gateway address (default: the one `tp login` kept, else
    /// 127.0.0.1:50051).
    #[arg(long, global = true, env = "TP_GATEWAY_ADDR")]
    gateway: Option<String>,
    /// `json` prints one JSON document, for scripts.
    #[arg(long, global = true, value_enum, default_value_t = browse::Output::Text)]
    output: browse::Output,
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_GATEWAY: &str = "127.0.0.1:50051";

#[derive(Subcommand)]
enum DevCommand {
    /// Print an HS256 bearer token signed with TP_JWT_HS256_SECRET.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long, alias = "sub")]
        user: String,
        /// member, admin or operator.
        #[arg(long, default_value = "member")]
        role: String,
        /// The tenant (omit for operators).
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[arg(long, env = "TP_JWT_HS256_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Create a tenant (as an operator) with an admin and one member, and
    /// print shell exports for their tokens.
    Tenant {
        #[arg(long, default_value = "Demo Co")]
        name: String,
        #[arg(long, default_value = "demo-admin")]
        admin: String,
        #[arg(long, default_value = "demo-user")]
        member: String,
        #[arg(long, env = "TP_JWT_HS256_SECRET", hide_env_values = true)]
        secret: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// For local development: tokens and a demo tenant, signed with the
    /// stack's development secret.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Keep a token (and the gateway's address) for the commands to use
    /// when given neither --token nor TP_TOKEN.
    Login {
        #[arg(long, env = "TP_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Run the persona behaviour suite against the running service (whatever
    /// responder it is configured with) and print a conformance report.
    Eval {
        /// The scenarios file.
        #[arg(long, default_value = "tests/persona/scenarios.toml")]
        scenarios: std::path::PathBuf,
        /// Bearer token of a member; their kept context is cleared per scenario.
        #[arg(long, env = "TP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Exit non-zero below this conformance, in percent.
        #[arg(long, default_value_t = 0.0)]
        min_conformance: f64,
    },
    /// Send one message (in a new conversation unless --conversation is
    /// given) and stream the reply to stdout.
    Send {
        message: String,
        #[arg(long)]
        conversation: Option<String>,
        /// Bearer token of a member.
        #[arg(long, env = "TP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Talk with the thought partner: replies stream as they arrive; arrow
    /// keys bring back what you typed; --conversation resumes one.
    Chat {
        #[arg(long)]
        conversation: Option<String>,
        /// Bearer token of a member.
        #[arg(long, env = "TP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// List, read, export and delete your conversations.
    Conversations {
        #[command(subcommand)]
        command: browse::ConversationsCommand,
        /// Bearer token of a member.
        #[arg(long, env = "TP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Search the frameworks and your organisation's documents.
    Search {
        query: String,
        #[arg(long, default_value_t = 10)]
        limit: i32,
        #[arg(long, env = "TP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// The frameworks the thought partner draws on.
    Frameworks {
        #[arg(long, env = "TP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// A tenant's members (admins).
    Members {
        #[command(subcommand)]
        command: admin::MembersCommand,
        /// Bearer token of a tenant admin.
        #[arg(long, env = "TP_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// The seats a tenant pays for (admins).
    Seats {
        #[command(subcommand)]
        command: admin::SeatsCommand,
        #[arg(long, env = "TP_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// The organisation's settings: retention, transcript search (admins).
    Settings {
        #[command(subcommand)]
        command: admin::SettingsCommand,
        #[arg(long, env = "TP_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Every member's conversations as JSON Lines, to stdout (admins;
    /// audited). --resume continues a cut-off export.
    Export {
        #[arg(long, default_value = "")]
        resume: String,
        #[arg(long, env = "TP_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// This month's usage by member (admins).
    Usage {
        #[arg(long, env = "TP_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// The tenant's audit trail, newest first (admins).
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: i32,
        #[arg(long, env = "TP_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Tenants (operators).
    Tenants {
        #[command(subcommand)]
        command: admin::TenantsCommand,
        /// Bearer token of an operator.
        #[arg(long, env = "TP_OPERATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// SLOs as code: generate rules, tests and dashboards from slo/*.yaml.
    Slo {
        #[command(subcommand)]
        command: slo::SloCommand,
    },
}

fn mint(
    secret: &str,
    sub: &str,
    tenant: Option<TenantId>,
    role: Role,
    ttl: u64,
) -> anyhow::Result<String> {
    Ok(mint_hs256(
        secret.as_bytes(),
        &Claims::expiring_in(sub, tenant, role, ttl),
    )?)
}

async fn channel(gateway: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(format!("http://{gateway}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse()?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

type ConversationClient = pb::conversation_service_client::ConversationServiceClient<Channel>;

/// Starts a conversation and returns its id.
async fn create_conversation(
    client: &mut ConversationClient,
    title: &str,
    token: &str,
) -> anyhow::Result<String> {
    Ok(client
        .create_conversation(authorized(
            pb::CreateConversationRequest {
                title: title.to_owned(),
            },
            token,
        )?)
        .await?
        .into_inner()
        .conversation
        .context("CreateConversation returned no conversation")?
        .conversation_id)
}

/// Sends one message, hands each delta to `on_delta` as it arrives, and
/// returns the whole reply.
async fn reply_text(
    client: &mut ConversationClient,
    conversation_id: &str,
    content: &str,
    token: &str,
    mut on_delta: impl FnMut(&str) -> std::io::Result<()>,
) -> anyhow::Result<String> {
    // One key for every attempt, so a retry can never send twice.
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let mut attempts = 0;
    let mut stream = loop {
        let sent = client
            .send_message(authorized(
                pb::SendMessageRequest {
                    conversation_id: conversation_id.to_owned(),
                    content: content.to_owned(),
                    idempotency_key: idempotency_key.clone(),
                    ..Default::default()
                },
                token,
            )?)
            .await;
        match sent {
            Ok(response) => break response.into_inner(),
            // Over a rate limit: wait as long as the gateway says, a few times.
            Err(status) if status.code() == tonic::Code::ResourceExhausted && attempts < 5 => {
                attempts += 1;
                let wait = status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay)
                    .unwrap_or(std::time::Duration::from_secs(1));
                tokio::time::sleep(wait).await;
            }
            Err(status) => return Err(status.into()),
        }
    };
    let mut text = String::new();
    while let Some(event) = stream.message().await? {
        if let Some(pb::send_message_response::Event::TextDelta(delta)) = event.event {
            on_delta(&delta.text)?;
            text.push_str(&delta.text);
        }
    }
    Ok(text)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tp: {}", browse::sentence(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where commands go and whose token they carry: flags and the
/// environment first, then what `tp login` kept.
struct Session {
    gateway: String,
    login: login::Login,
}

impl Session {
    fn token(&self, given: Option<String>) -> anyhow::Result<String> {
        given.or_else(|| self.login.token.clone()).context(
            "no token: pass --token, set the variable `tp <command> --help` names, or run `tp login`",
        )
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let login = login::load()?;
    let session = Session {
        gateway: cli
            .gateway
            .clone()
            .or_else(|| login.gateway.clone())
            .unwrap_or_else(|| DEFAULT_GATEWAY.to_owned()),
        login,
    };
    let gateway = session.gateway.as_str();
    match cli.command {
        Command::Chat {
            conversation,
            token,
        } => {
            chat::chat(
                channel(gateway).await?,
                &session.token(token)?,
                conversation,
            )
            .await?
        }
        Command::Conversations { command, token } => {
            let token = session.token(token)?;
            browse::conversations(channel(gateway).await?, &token, command, cli.output).await?
        }
        Command::Search {
            query,
            limit,
            token,
        } => {
            let token = session.token(token)?;
            browse::search(channel(gateway).await?, &token, query, limit, cli.output).await?
        }
        Command::Frameworks { token } => {
            let token = session.token(token)?;
            browse::frameworks(channel(gateway).await?, &token, cli.output).await?
        }
        Command::Members { command, token } => {
            let token = session.token(token)?;
            admin::members(channel(gateway).await?, &token, command, cli.output).await?
        }
        Command::Seats { command, token } => {
            let token = session.token(token)?;
            admin::seats(channel(gateway).await?, &token, command, cli.output).await?
        }
        Command::Settings { command, token } => {
            let token = session.token(token)?;
            admin::settings(channel(gateway).await?, &token, command, cli.output).await?
        }
        Command::Export { resume, token } => {
            let token = session.token(token)?;
            let mut stdout = std::io::stdout().lock();
            admin::export_organisation(channel(gateway).await?, &token, resume, &mut stdout).await?
        }
        Command::Usage { token } => {
            let token = session.token(token)?;
            admin::usage(channel(gateway).await?, &token, cli.output).await?
        }
        Command::Audit { limit, token } => {
            let token = session.token(token)?;
            admin::audit(channel(gateway).await?, &token, limit, cli.output).await?
        }
        Command::Tenants { command, token } => {
            let token = session.token(token)?;
            admin::tenants(channel(gateway).await?, &token, command, cli.output).await?
        }
        Command::Slo {
            command: slo::SloCommand::Status { tenant, token },
        } => {
            let token = session.token(token)?;
            admin::slo_status(channel(gateway).await?, &token, tenant, cli.output).await?
        }
        Command::Slo { command } => slo::run(command)?,
        Command::Login { token } => {
            // Checked before it is kept: a token the gateway refuses is
            // an error now, not at the next command.
            let mut client = pb::conversation_service_client::ConversationServiceClient::new(
                channel(gateway).await?,
            );
            client
                .list_conversations(authorized(
                    pb::ListConversationsRequest {
                        page_size: 1,
                        page_token: String::new(),
                    },
                    &token,
                )?)
                .await
                .or_else(|status| match status.code() {
                    // An operator's or admin's token may not list
                    // conversations; it was still accepted.
                    tonic::Code::PermissionDenied => Ok(tonic::Response::new(Default::default())),
                    _ => Err(status),
                })?;
            let path = login::store(gateway, &token)?;
            println!(
                "Logged in to {gateway}; the token is kept in {}.",
                path.display()
            );
        }
        Command::Dev {
            command:
                DevCommand::Token {
                    user,
                    role,
                    tenant,
                    ttl,
                    secret,
                },
        } => {
            let role: Role = role.parse()?;
            let tenant = tenant.map(|t| t.parse::<TenantId>()).transpose()?;
            println!("{}", mint(&secret, &user, tenant, role, ttl)?);
        }
        Command::Dev {
            command:
                DevCommand::Tenant {
                    name,
                    admin,
                    member,
                    secret,
                },
        } => {
            let channel = channel(gateway).await?;
            let operator = mint(&secret, "tp-cli-operator", None, Role::Operator, 300)?;
            let tenant =
                pb::tenant_admin_service_client::TenantAdminServiceClient::new(channel.clone())
                    .create_tenant(authorized(
                        pb::CreateTenantRequest {
                            display_name: name,
                            seats: 10,
                            admin_user_id: admin.clone(),
                        },
                        &operator,
                    )?)
                    .await?
                    .into_inner()
                    .tenant
                    .context("CreateTenant returned no tenant")?;
            let tenant_id: TenantId = tenant.tenant_id.parse()?;
            let admin_token = mint(&secret, &admin, Some(tenant_id), Role::Admin, 24 * 3600)?;
            pb::member_service_client::MemberServiceClient::new(channel)
                .add_member(authorized(
                    pb::AddMemberRequest {
                        user_id: member.clone(),
                        role: pb::MemberRole::Member.into(),
                    },
                    &admin_token,
                )?)
                .await?;
            let member_token = mint(&secret, &member, Some(tenant_id), Role::Member, 24 * 3600)?;
            println!("export TP_TENANT_ID={tenant_id}");
            println!("export TP_ADMIN_TOKEN={admin_token}");
            println!("export TP_TOKEN={member_token}");
        }
        Command::Eval {
            scenarios,
            token,
            min_conformance,
        } => {
            let text = std::fs::read_to_string(&scenarios)
                .with_context(|| format!("cannot read {}", scenarios.display()))?;
            let suite = tp_coach::conformance::Suite::parse(&text)?;
            let token = session.token(token)?;
            let mut client = pb::conversation_service_client::ConversationServiceClient::new(
                channel(gateway).await?,
            );
            let mut by_rule: std::collections::BTreeMap<String, (usize, usize)> =
                Default::default();
            let (mut turns, mut passed) = (0usize, 0usize);
            for scenario in &suite.scenario {
                client
                    .clear_context_profile(authorized(pb::ClearContextProfileRequest {}, &token)?)
                    .await?;
                let conversation_id =
                    create_conversation(&mut client, &scenario.name, &token).await?;
                for turn in &scenario.turn {
                    let reply = reply_text(
                        &mut client,
                        &conversation_id,
                        &turn.user,
                        &token,
                        |_| Ok(()),
                    )
                    .await?;
                    let problems = tp_coach::conformance::judge(turn, &reply, &[]);
                    turns += 1;
                    let entry = by_rule.entry(scenario.rule.clone()).or_default();
                    entry.1 += 1;
                    if problems.is_empty() {
                        passed += 1;
                        entry.0 += 1;
                    } else {
                        println!(
                            "FAIL [{}] {}: {}",
                            scenario.rule,
                            scenario.name,
                            problems.join("; ")
                        );
                    }
                }
            }
            for (rule, (ok, all)) in &by_rule {
                println!("{rule:<24} {ok:>3}/{all:<3}");
            }
            let conformance = 100.0 * passed as f64 / turns.max(1) as f64;
            println!(
                "conformance: {conformance:.1}% of {turns} turns in {} scenarios",
                suite.scenario.len()
            );
            anyhow::ensure!(
                conformance >= min_conformance,
                "conformance {conformance:.1}% is below {min_conformance}%"
            );
        }
        Command::Send {
            message,
            conversation,
            token,
        } => {
            let token = session.token(token)?;
            let mut client = pb::conversation_service_client::ConversationServiceClient::new(
                channel(gateway).await?,
            );
            let conversation_id = match conversation {
                Some(id) => id,
                None => {
                    let id = create_conversation(&mut client, "", &token).await?;
                    eprintln!("conversation {id}");
                    id
                }
            };
            let mut stdout = std::io::stdout();
            reply_text(&mut client, &conversation_id, &message, &token, |delta| {
                write!(stdout, "{delta}")?;
                stdout.flush()
            })
            .await?;
            writeln!(stdout)?;
        }
    }
    Ok(())
}
