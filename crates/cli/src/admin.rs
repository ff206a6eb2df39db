//! For a tenant's admins: `tp members`, `tp seats`, `tp usage`, `tp audit`;
//! for operators: `tp tenants create`, `tp slo status`. Text tables for
//! people, `--output json` for scripts.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tp_proto::v1 as pb;

use crate::authorized;
use crate::browse::{Output, time};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MemberRole {
    Member,
    Admin,
}

impl MemberRole {
    fn proto(self) -> i32 {
        match self {
            MemberRole::Member => pb::MemberRole::Member.into(),
            MemberRole::Admin => pb::MemberRole::Admin.into(),
        }
    }
}

fn role_name(role: i32) -> &'static str {
    match pb::MemberRole::try_from(role) {
        Ok(pb::MemberRole::Admin) => "admin",
        Ok(pb::MemberRole::Member) => "member",
        _ => "unknown",
    }
}

#[derive(Subcommand)]
pub enum MembersCommand {
    List,
    /// Give a user (their token's `sub`) a seat.
    Add {
        user: String,
        #[arg(long, value_enum, default_value_t = MemberRole::Member)]
        role: MemberRole,
    },
    Remove {
        user: String,
    },
    /// Make a member an admin, or an admin a member.
    Role {
        user: String,
        #[arg(value_enum)]
        role: MemberRole,
    },
}

#[derive(Subcommand)]
pub enum SeatsCommand {
    /// Seats paid for and held.
    Show,
    /// Change the seats paid for (prorated on the next invoice).
    Set { seats: i32 },
}

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// Open a tenant with its first admin.
    Create {
        name: String,
        #[arg(long, default_value_t = 5)]
        seats: i32,
        /// The first admin's user id (their token's `sub`).
        #[arg(long)]
        admin: String,
    },
}

fn member_json(m: &pb::Member) -> Value {
    json!({ "user_id": m.user_id, "role": role_name(m.role), "create_time": time(m.create_time.as_ref()) })
}

pub async fn members(
    channel: Channel,
    token: &str,
    command: MembersCommand,
    output: Output,
) -> anyhow::Result<()> {
    let mut client = pb::member_service_client::MemberServiceClient::new(channel);
    let member = match command {
        MembersCommand::List => {
            let members = client
                .list_members(authorized(pb::ListMembersRequest::default(), token)?)
                .await?
                .into_inner()
                .members;
            match output {
                Output::Json => println!(
                    "{}",
                    Value::Array(members.iter().map(member_json).collect())
                ),
                Output::Text => {
                    for m in &members {
                        println!(
                            "{:<32} {:<7} since {}",
                            m.user_id,
                            role_name(m.role),
                            time(m.create_time.as_ref())
                        );
                    }
                }
            }
            return Ok(());
        }
        MembersCommand::Add { user, role } => {
            client
                .add_member(authorized(
                    pb::AddMemberRequest {
                        user_id: user,
                        role: role.proto(),
                    },
                    token,
                )?)
                .await?
                .into_inner()
                .member
        }
        MembersCommand::Remove { user } => {
            client
                .remove_member(authorized(
                    pb::RemoveMemberRequest {
                        user_id: user.clone(),
                    },
                    token,
                )?)
                .await?;
            match output {
                Output::Json => println!("{}", json!({ "removed": user })),
                Output::Text => println!("Removed {user}; their seat is free."),
            }
            return Ok(());
        }
        MembersCommand::Role { user, role } => {
            client
                .update_member_role(authorized(
                    pb::UpdateMemberRoleRequest {
                        user_id: user,
                        role: role.proto(),
                    },
                    token,
                )?)
                .await?
                .into_inner()
                .member
        }
    };
    let member = member.context("the gateway returned no member")?;
    match output {
        Output::Json => println!("{}", member_json(&member)),
        Output::Text => {
            let article = if role_name(member.role) == "admin" {
                "an"
            } else {
                "a"
            };
            println!(
                "{} is {article} {}.",
                member.user_id,
                role_name(member.role)
            )
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum SettingsCommand {
    /// The organisation's settings.
    Show,
    /// Change some of them; the others stay.
    Set {
        /// Days conversations are kept after their last turn (0: forever;
        /// otherwise 7..=3650).
        #[arg(long)]
        retention_days: Option<i32>,
        /// Whether admins may search every member's conversations.
        #[arg(long)]
        admins_can_search_all_transcripts: Option<bool>,
    },
}

pub async fn settings(
    channel: Channel,
    token: &str,
    command: SettingsCommand,
    output: Output,
) -> anyhow::Result<()> {
    let mut client = pb::settings_service_client::SettingsServiceClient::new(channel);
    let settings = match command {
        SettingsCommand::Show => {
            client
                .get_settings(authorized(pb::GetSettingsRequest {}, token)?)
                .await?
                .into_inner()
                .settings
        }
        SettingsCommand::Set {
            retention_days,
            admins_can_search_all_transcripts,
        } => {
            client
                .update_settings(authorized(
                    pb::UpdateSettingsRequest {
                        admins_can_search_all_transcripts,
                        retention_days,
                    },
                    token,
                )?)
                .await?
                .into_inner()
                .settings
        }
    }
    .context("the gateway returned no settings")?;
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "retention_days": settings.retention_days,
                "admins_can_search_all_transcripts": settings.admins_can_search_all_transcripts,
            })
        ),
        Output::Text => {
            let kept = match settings.retention_days {
                0 => "forever".to_owned(),
                days => format!("for {days} days after their last turn"),
            };
            println!("Conversations are kept {kept}.");
            println!(
                "Admins {} search every member's conversations.",
                if settings.admins_can_search_all_transcripts {
                    "may"
                } else {
                    "may not"
                }
            );
        }
    }
    Ok(())
}

/// Writes the organisation's export (JSON Lines) to `out`, resuming after
/// `resume_token` if given. If the stream breaks, the last token received
/// is in the error, so the command can be run again with `--resume`.
pub async fn export_organisation(
    channel: Channel,
    token: &str,
    resume_token: String,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let mut client = pb::conversation_service_client::ConversationServiceClient::new(channel);
    let mut stream = client
        .export_tenant(authorized(pb::ExportTenantRequest { resume_token }, token)?)
        .await?
        .into_inner();
    let mut last = String::new();
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                out.write_all(&chunk.data)?;
                last = chunk.resume_token;
            }
            Ok(None) => break,
            Err(status) if !last.is_empty() => {
                out.flush()?;
                anyhow::bail!(
                    "the export stopped ({}: {}); everything up to it was written: run again \
                     with --resume {last} and append",
                    status.code(),
                    status.message()
                );
            }
            Err(status) => return Err(status.into()),
        }
    }
    out.flush()?;
    Ok(())
}

fn subscription_json(s: &pb::Subscription) -> Value {
    json!({ "plan": s.plan, "seats": s.seats, "seats_used": s.seats_used })
}

pub async fn seats(
    channel: Channel,
    token: &str,
    command: SeatsCommand,
    output: Output,
) -> anyhow::Result<()> {
    let mut client = pb::subscription_service_client::SubscriptionServiceClient::new(channel);
    let subscription = match command {
        SeatsCommand::Show => {
            client
                .get_subscription(authorized(pb::GetSubscriptionRequest {}, token)?)
                .await?
                .into_inner()
                .subscription
        }
        SeatsCommand::Set { seats } => {
            client
                .update_seats(authorized(pb::UpdateSeatsRequest { seats }, token)?)
                .await?
                .into_inner()
                .subscription
        }
    }
    .context("the gateway returned no subscription")?;
    match output {
        Output::Json => println!("{}", subscription_json(&subscription)),
        Output::Text => println!(
            "{} of {} seats held (plan {}).",
            subscription.seats_used, subscription.seats, subscription.plan
        ),
    }
    Ok(())
}

pub async fn usage(channel: Channel, token: &str, output: Output) -> anyhow::Result<()> {
    let usage = pb::subscription_service_client::SubscriptionServiceClient::new(channel)
        .get_usage(authorized(pb::GetUsageRequest::default(), token)?)
        .await?
        .into_inner();
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "start_time": time(usage.start_time.as_ref()),
                "end_time": time(usage.end_time.as_ref()),
                "seats_paid": usage.seats_paid,
                "seats_active": usage.seats_active,
                "members": usage.members.iter().map(|m| json!({
                    "user_id": m.user_id,
                    "messages": m.messages,
                    "input_tokens": m.input_tokens,
                    "output_tokens": m.output_tokens,
                    "active_days": m.active_days,
                })).collect::<Vec<_>>(),
            })
        ),
        Output::Text => {
            println!(
                "{} to {}: {} of {} paid seats active",
                time(usage.start_time.as_ref()),
                time(usage.end_time.as_ref()),
                usage.seats_active,
                usage.seats_paid
            );
            println!(
                "{:<32} {:>9} {:>12} {:>12} {:>5}",
                "member", "messages", "tokens in", "tokens out", "days"
            );
            for m in &usage.members {
                println!(
                    "{:<32} {:>9} {:>12} {:>12} {:>5}",
                    m.user_id, m.messages, m.input_tokens, m.output_tokens, m.active_days
                );
            }
        }
    }
    Ok(())
}

pub async fn audit(
    channel: Channel,
    token: &str,
    limit: i32,
    output: Output,
) -> anyhow::Result<()> {
    let events = pb::audit_service_client::AuditServiceClient::new(channel)
        .list_audit_events(authorized(
            pb::ListAuditEventsRequest {
                page_size: limit,
                page_token: String::new(),
            },
            token,
        )?)
        .await?
        .into_inner()
        .events;
    match output {
        Output::Json => println!(
            "{}",
            Value::Array(
                events
                    .iter()
                    .map(|e| json!({
                        "sequence": e.sequence,
                        "time": time(e.time.as_ref()),
                        "actor": e.actor,
                        "action": e.action,
                        "target": e.target,
                    }))
                    .collect()
            )
        ),
        Output::Text => {
            for e in &events {
                println!(
                    "{}  {:<24} {:<28} {}",
                    time(e.time.as_ref()),
                    e.actor,
                    e.action,
                    e.target
                );
            }
        }
    }
    Ok(())
}

pub async fn tenants(
    channel: Channel,
    token: &str,
    command: TenantsCommand,
    output: Output,
) -> anyhow::Result<()> {
    let TenantsCommand::Create { name, seats, admin } = command;
    let tenant = pb::tenant_admin_service_client::TenantAdminServiceClient::new(channel)
        .create_tenant(authorized(
            pb::CreateTenantRequest {
                display_name: name,
                seats,
                admin_user_id: admin.clone(),
            },
            token,
        )?)
        .await?
        .into_inner()
        .tenant
        .context("CreateTenant returned no tenant")?;
    match output {
        Output::Json => println!(
            "{}",
            json!({ "tenant_id": tenant.tenant_id, "display_name": tenant.display_name, "admin": admin })
        ),
        Output::Text => println!(
            "Tenant {} ({}) is open; {admin} is its admin.",
            tenant.tenant_id, tenant.display_name
        ),
    }
    Ok(())
}

/// A budget bar: `width` cells, filled by the share of budget left.
pub fn budget_bar(remaining: f64, width: usize) -> String {
    let filled = (remaining.clamp(0.0, 1.0) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

pub async fn slo_status(
    channel: Channel,
    token: &str,
    tenant: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let status = pb::operations_service_client::OperationsServiceClient::new(channel)
        .get_slo_status(authorized(
            pb::GetSloStatusRequest {
                tenant_id: tenant.unwrap_or_default(),
            },
            token,
        )?)
        .await?
        .into_inner();
    match output {
        Output::Json => println!(
            "{}",
            Value::Array(
                status
                    .slos
                    .iter()
                    .map(|s| json!({
                        "name": s.name,
                        "target": s.target,
                        "sli": s.sli,
                        "total_events": s.total_events,
                        "error_budget_remaining": s.error_budget_remaining,
                        "firing": s.alerts.iter().filter(|a| a.firing).map(|a| a.name.clone()).collect::<Vec<_>>(),
                    }))
                    .collect()
            )
        ),
        Output::Text => {
            println!(
                "{:<40} {:>8} {:>9} {:>8}  {:<22} alerts",
                "SLO", "target", "SLI", "events", "budget left"
            );
            for s in &status.slos {
                let sli = s
                    .sli
                    .map_or("-".to_owned(), |v| format!("{:.3}%", v * 100.0));
                let firing: Vec<&str> = s
                    .alerts
                    .iter()
                    .filter(|a| a.firing)
                    .map(|a| a.name.as_str())
                    .collect();
                println!(
                    "{:<40} {:>7.2}% {:>9} {:>8}  {} {:>4.0}%  {}",
                    s.name,
                    s.target * 100.0,
                    sli,
                    s.total_events,
                    budget_bar(s.error_budget_remaining, 12),
                    s.error_budget_remaining * 100.0,
                    if firing.is_empty() { "-".to_owned() } else { firing.join(", ") }
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_bar_fills_with_the_budget_left_and_stays_in_its_cells() {
        assert_eq!(budget_bar(1.0, 10), "[##########]");
        assert_eq!(budget_bar(0.5, 10), "[#####.....]");
        assert_eq!(budget_bar(0.0, 10), "[..........]");
        assert_eq!(budget_bar(-0.7, 10), "[..........]", "overspent");
        assert_eq!(budget_bar(3.0, 4), "[####]");
    }
}
