//! Who may call what: one table for every public RPC, and the pure decision
//! [`crate::access::AccessLayer`] applies to it before any handler runs.
//! Handlers never check roles themselves.

use std::fmt;
use std::str::FromStr;

use tonic::Status;
use tp_context::Role;

/// Who a method is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Platform staff (`role: operator`, no tenant). Never a tenant's data.
    Operator,
    /// Any member of the token's tenant (members and admins).
    Member,
    /// The tenant's admins.
    Admin,
}

/// Whether a method changes anything: a suspended tenant is read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Read,
    Write,
}

pub struct Rule {
    /// The gRPC path, `/package.Service/Method`.
    pub method: &'static str,
    pub audience: Audience,
    pub effect: Effect,
}

impl Rule {
    /// `Service/Method`, for messages.
    pub fn name(&self) -> &'static str {
        self.method
            .rsplit_once('/')
            .map(|(service, method)| {
                let service = service.rsplit('.').next().unwrap_or(service);
                &self.method[self.method.len() - method.len() - service.len() - 1..]
            })
            .unwrap_or(self.method)
    }
}

macro_rules! rule {
    ($service:literal / $method:literal, $audience:ident, $effect:ident) => {
        Rule {
            method: concat!("/thoughtpartner.v1.", $service, "/", $method),
            audience: Audience::$audience,
            effect: Effect::$effect,
        }
    };
}

/// Every public RPC. A test checks this against the public descriptor set,
/// so a new RPC cannot ship without a row.
pub const POLICY: &[Rule] = &[
    rule!("ConversationService" / "CreateConversation", Member, Write),
    rule!("ConversationService" / "GetConversation", Member, Read),
    rule!("ConversationService" / "ListConversations", Member, Read),
    rule!("ConversationService" / "SendMessage", Member, Write),
    rule!("ConversationService" / "ListMessages", Member, Read),
    rule!("ConversationService" / "EditMessage", Member, Write),
    rule!("ConversationService" / "RegenerateReply", Member, Write),
    rule!("ConversationService" / "DeleteConversation", Member, Write),
    rule!("ConversationService" / "GetContextProfile", Member, Read),
    rule!("ConversationService" / "ClearContextProfile", Member, Write),
    // Members search their own conversations; the organisation scope is
    // decided by `decide_organisation_search`.
    rule!("ConversationService" / "SearchMessages", Member, Read),
    rule!("ConversationService" / "ExportConversation", Member, Read),
    // Every member's transcripts: admins, and each export is audited.
    rule!("ConversationService" / "ExportTenant", Admin, Read),
    rule!("KnowledgeService" / "Search", Member, Read),
    rule!("KnowledgeService" / "ListFrameworks", Member, Read),
    rule!("KnowledgeService" / "GetFramework", Member, Read),
    rule!("KnowledgeService" / "CreateDocument", Admin, Write),
    rule!("KnowledgeService" / "ListDocuments", Member, Read),
    rule!("KnowledgeService" / "GetDocument", Member, Read),
    rule!("KnowledgeService" / "DeleteDocument", Admin, Write),
    rule!("TenantAdminService" / "CreateTenant", Operator, Write),
    rule!("TenantAdminService" / "GetTenant", Operator, Read),
    rule!("TenantAdminService" / "SuspendTenant", Operator, Write),
    rule!("TenantAdminService" / "ReactivateTenant", Operator, Write),
    rule!("MemberService" / "AddMember", Admin, Write),
    rule!("MemberService" / "RemoveMember", Admin, Write),
    rule!("MemberService" / "ListMembers", Admin, Read),
    rule!("MemberService" / "UpdateMemberRole", Admin, Write),
    rule!("SubscriptionService" / "GetSubscription", Admin, Read),
    rule!("SubscriptionService" / "UpdateSeats", Admin, Write),
    rule!("SubscriptionService" / "PreviewInvoice", Admin, Read),
    rule!("SubscriptionService" / "GetUsage", Admin, Read),
    rule!("QuotaService" / "GetMyQuota", Member, Read),
    rule!("QuotaService" / "SetQuota", Admin, Write),
    rule!("AuditService" / "ListAuditEvents", Admin, Read),
    rule!("OperationsService" / "GetSloStatus", Operator, Read),
    rule!("SettingsService" / "GetSettings", Admin, Read),
    rule!("SettingsService" / "UpdateSettings", Admin, Write),
];

/// The rule for a gRPC path, if it is a public RPC.
pub fn rule_for(path: &str) -> Option<&'static Rule> {
    POLICY.iter().find(|rule| rule.method == path)
}

/// Where a tenant stands with the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantStatus {
    Active,
    /// A payment failed; everything works, with a warning.
    PastDue,
    /// Read-only, by an operator or the billing provider.
    Suspended,
    /// The subscription ended: read-only.
    Cancelled,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::PastDue => "past_due",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Cancelled => "cancelled",
        }
    }

    /// Whether writes are refused.
    pub fn read_only(self) -> bool {
        matches!(self, TenantStatus::Suspended | TenantStatus::Cancelled)
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown tenant status `{0}`")]
pub struct UnknownStatus(String);

impl FromStr for TenantStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(TenantStatus::Active),
            "past_due" => Ok(TenantStatus::PastDue),
            "suspended" => Ok(TenantStatus::Suspended),
            "cancelled" => Ok(TenantStatus::Cancelled),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

/// A tenant's standing as stored: status, why, and its plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub status: TenantStatus,
    pub reason: String,
    pub plan: String,
    /// The organisation's setting: may its admins search every member's
    /// transcripts?
    pub admins_can_search_all_transcripts: bool,
}

/// What the gateway knows about a caller when it decides.
pub struct Caller<'a> {
    pub user_id: &'a str,
    /// The role the token claims.
    pub token_role: Role,
    /// Whether the token names a tenant (operator tokens do not).
    pub has_tenant: bool,
    /// The membership stored for the token's tenant and user, if any.
    pub stored_role: Option<Role>,
    /// The tenant's standing, if it exists.
    pub standing: Option<&'a Standing>,
}

/// May `caller` call the method `rule` governs? Pure: the layer gathers the
/// facts, this decides, and a table-driven test walks every case.
pub fn decide(rule: &Rule, caller: &Caller<'_>) -> Result<(), Status> {
    let method = rule.name();
    if rule.audience == Audience::Operator {
        return if caller.token_role == Role::Operator {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{method} needs an operator token (role: operator); this token has role {}",
                caller.token_role
            )))
        };
    }
    if !caller.has_tenant {
        return Err(Status::permission_denied(format!(
            "{method} acts inside a tenant and operator tokens have none (operators cannot \
             read tenants' data); use a member or admin token with a tenant_id claim"
        )));
    }
    let (Some(stored_role), Some(standing)) = (caller.stored_role, caller.standing) else {
        return Err(Status::permission_denied(format!(
            "user `{}` is not a member of the token's tenant (or the tenant does not exist); \
             a tenant admin adds members with MemberService.AddMember",
            caller.user_id
        )));
    };
    if rule.audience == Audience::Admin {
        if caller.token_role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "{method} needs a tenant admin token (role: admin); this token has role {}",
                caller.token_role
            )));
        }
        if stored_role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "user `{}` is no longer an admin of this tenant; {method} needs one",
                caller.user_id
            )));
        }
    }
    if rule.effect == Effect::Write && standing.status.read_only() {
        let reason = if standing.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", standing.reason)
        };
        return Err(Status::failed_precondition(format!(
            "the tenant is {}{reason}: it is read-only, so {method} is refused; conversations \
             can still be read and exported",
            standing.status
        )));
    }
    Ok(())
}

/// May the caller, already admitted to `SearchMessages`, search every
/// member's conversations? Only a tenant admin, and only when the
/// organisation turned it on. Pure, beside [`decide`], so roles are still
/// decided in this one module.
pub fn decide_organisation_search(role: Role, standing: &Standing) -> Result<(), Status> {
    if role != Role::Admin {
        return Err(Status::permission_denied(format!(
            "SEARCH_SCOPE_ORGANISATION searches every member's conversations and needs a tenant \
             admin; this caller has role {role} (SEARCH_SCOPE_OWN searches your own)"
        )));
    }
    if !standing.admins_can_search_all_transcripts {
        return Err(Status::permission_denied(
            "this organisation does not let admins search members' conversations; an admin can \
             turn on admins_can_search_all_transcripts with SettingsService.UpdateSettings \
             (the change is audited)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn standing(status: TenantStatus) -> Standing {
        Standing {
            status,
            reason: "invoice unpaid".into(),
            plan: "standard".into(),
            admins_can_search_all_transcripts: false,
        }
    }

    #[test]
    fn organisation_search_needs_an_admin_and_the_organisations_consent() {
        let mut allowed = standing(TenantStatus::Active);
        allowed.admins_can_search_all_transcripts = true;
        let closed = standing(TenantStatus::Active);
        assert!(decide_organisation_search(Role::Admin, &allowed).is_ok());
        let member = decide_organisation_search(Role::Member, &allowed).expect_err("a member");
        assert_eq!(member.code(), Code::PermissionDenied);
        assert!(member.message().contains("needs a tenant admin"));
        let not_on = decide_organisation_search(Role::Admin, &closed).expect_err("not turned on");
        assert_eq!(not_on.code(), Code::PermissionDenied);
        assert!(not_on.message().contains("UpdateSettings"));
    }

    fn rule(method: &str) -> &'static Rule {
        rule_for(&format!("/thoughtpartner.v1.{method}")).expect("a public method")
    }

    fn call(method: &str, token: Role, stored: Option<Role>, status: TenantStatus) -> Code {
        let standing = standing(status);
        let caller = Caller {
            user_id: "ann",
            token_role: token,
            has_tenant: token != Role::Operator,
            stored_role: stored,
            standing: stored.map(|_| &standing),
        };
        match decide(rule(method), &caller) {
            Ok(()) => Code::Ok,
            Err(status) => status.code(),
        }
    }

    /// Every public RPC has exactly one rule, and every rule an RPC: a new
    /// RPC cannot ship unguarded, nor a rule outlive its RPC.
    #[test]
    fn the_table_covers_the_public_api_exactly() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(tp_proto::PUBLIC_DESCRIPTOR_SET)
            .expect("a valid descriptor set");
        let mut methods: Vec<String> = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        methods.sort();
        let mut rules: Vec<String> = POLICY.iter().map(|r| r.method.to_owned()).collect();
        rules.sort();
        let before = rules.len();
        rules.dedup();
        assert_eq!(before, rules.len(), "a method has two rules");
        assert_eq!(rules, methods);
    }

    #[test]
    fn names_are_service_and_method() {
        assert_eq!(
            rule("MemberService/AddMember").name(),
            "MemberService/AddMember"
        );
    }

    #[test]
    fn every_rule_is_decided_for_every_role() {
        use Role::*;
        let active = TenantStatus::Active;
        for rule in POLICY {
            let method = rule.method.trim_start_matches("/thoughtpartner.v1.");
            let member = call(method, Member, Some(Member), active);
            let admin = call(method, Admin, Some(Admin), active);
            let operator = call(method, Operator, None, active);
            let expected = match rule.audience {
                Audience::Operator => (Code::PermissionDenied, Code::PermissionDenied, Code::Ok),
                Audience::Member => (Code::Ok, Code::Ok, Code::PermissionDenied),
                Audience::Admin => (Code::PermissionDenied, Code::Ok, Code::PermissionDenied),
            };
            assert_eq!((member, admin, operator), expected, "{method}");
        }
    }

    #[test]
    fn stored_membership_decides_not_the_token() {
        use Role::*;
        let active = TenantStatus::Active;
        // Removed: nothing works.
        assert_eq!(
            call("KnowledgeService/Search", Member, None, active),
            Code::PermissionDenied
        );
        // Demoted admin with an old admin token: no admin methods.
        assert_eq!(
            call("MemberService/AddMember", Admin, Some(Member), active),
            Code::PermissionDenied
        );
        // Promoted member with an old member token: admin methods need a
        // fresh admin token, member methods work.
        assert_eq!(
            call("MemberService/AddMember", Member, Some(Admin), active),
            Code::PermissionDenied
        );
        assert_eq!(
            call(
                "ConversationService/SendMessage",
                Member,
                Some(Admin),
                active
            ),
            Code::Ok
        );
    }

    #[test]
    fn a_read_only_tenant_reads_but_never_writes() {
        use Role::*;
        for status in [TenantStatus::Suspended, TenantStatus::Cancelled] {
            for rule in POLICY.iter().filter(|r| r.audience != Audience::Operator) {
                let method = rule.method.trim_start_matches("/thoughtpartner.v1.");
                let expected = match rule.effect {
                    Effect::Read => Code::Ok,
                    Effect::Write => Code::FailedPrecondition,
                };
                assert_eq!(
                    call(method, Admin, Some(Admin), status),
                    expected,
                    "{method}"
                );
            }
        }
        for status in [TenantStatus::Active, TenantStatus::PastDue] {
            assert_eq!(
                call(
                    "ConversationService/SendMessage",
                    Member,
                    Some(Member),
                    status
                ),
                Code::Ok
            );
        }
    }

    #[test]
    fn a_refused_write_says_why() {
        let standing = standing(TenantStatus::Suspended);
        let caller = Caller {
            user_id: "ann",
            token_role: Role::Member,
            has_tenant: true,
            stored_role: Some(Role::Member),
            standing: Some(&standing),
        };
        let status = decide(rule("ConversationService/SendMessage"), &caller).unwrap_err();
        assert!(status.message().contains("suspended (invoice unpaid)"));
        assert!(status.message().contains("can still be read"));
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            TenantStatus::Active,
            TenantStatus::PastDue,
            TenantStatus::Suspended,
            TenantStatus::Cancelled,
        ] {
            assert_eq!(status.as_str().parse::<TenantStatus>().unwrap(), status);
        }
        assert!("frozen".parse::<TenantStatus>().is_err());
    }
}
