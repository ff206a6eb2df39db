//! Signals as an operator sees them: each service's ops port serves its
//! own RPC metrics by the OpenTelemetry conventions (fully-qualified
//! `rpc.method`, status names, `error.type` only for server errors), with
//! trace-id exemplars, in OpenMetrics text; `/healthz` and `/readyz`
//! answer; each call leaves one canonical event with who and what, never
//! the message; and every name the services expose is declared in
//! `crates/telemetry/schema.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tonic::Code;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, conversations_via, http_get, new_conversation, send};

const SEND: &str = "thoughtpartner.v1.ConversationService/SendMessage";
const SEARCH: &str = "thoughtpartner.v1.KnowledgeService/Search";
const RETRIEVE: &str = "thoughtpartner.internal.knowledge.v1.RetrievalService/Retrieve";

/// One sample line of an exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    /// The exemplar's labels, if the line has one.
    exemplar: Option<BTreeMap<String, String>>,
}

/// `k="v",k2="v2"` (our values hold no quotes or escapes).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some((value, after)) = after.split_once('"') else {
            break;
        };
        labels.insert(
            key.trim_start_matches(',').trim().to_owned(),
            value.to_owned(),
        );
        rest = after;
    }
    labels
}

fn parse(exposition: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, exemplar) = match line.split_once(" # ") {
                Some((series, exemplar)) => (series, Some(exemplar)),
                None => (line, None),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(rest.rsplit_once('}').map_or(rest, |(l, _)| l)),
                ),
                None => (
                    series.split_whitespace().next().unwrap_or_default(),
                    BTreeMap::new(),
                ),
            };
            let exemplar = exemplar.map(|e| {
                let inner = e
                    .trim_start_matches('{')
                    .split_once('}')
                    .map_or("", |(l, _)| l);
                parse_labels(inner)
            });
            Sample {
                name: name.to_owned(),
                labels,
                exemplar,
            }
        })
        .collect()
}

async fn scrape(addr: SocketAddr) -> anyhow::Result<Vec<Sample>> {
    let reply = http_get(addr, "/metrics").await?;
    anyhow::ensure!(reply.status == 200, "/metrics answered {}", reply.status);
    anyhow::ensure!(
        reply.content_type.as_deref()
            == Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "content type {:?}",
        reply.content_type
    );
    anyhow::ensure!(reply.body.ends_with("# EOF\n"), "no EOF marker");
    Ok(parse(&reply.body))
}

fn buckets<'a>(
    samples: &'a [Sample],
    metric: &str,
    method: &str,
    code: Option<&str>,
) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == format!("{metric}_bucket")
                && s.labels
                    .get("rpc.method".replace('.', "_").as_str())
                    .map(String::as_str)
                    == Some(method)
                && code
                    .is_none_or(|c| s.labels.get("rpc_status_code").map(String::as_str) == Some(c))
        })
        .collect()
}

/// Scrapes until `ready` holds (a stream's end is recorded as it drains),
/// for at most five seconds.
async fn scrape_until(
    addr: SocketAddr,
    ready: impl Fn(&[Sample]) -> bool,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = scrape(addr).await?;
    for _ in 0..50 {
        if ready(&samples) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples = scrape(addr).await?;
    }
    Ok(samples)
}

/// The samples of `series` whose labels include all of `labels`.
fn with_labels<'a>(
    samples: &'a [Sample],
    series: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == series
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of a `_count` or `_total` sample line (the last field).
async fn sample_value(
    addr: SocketAddr,
    series: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<f64> {
    let body = http_get(addr, "/metrics").await?.body;
    let mut total = 0.0;
    for line in body.lines().filter(|l| l.starts_with(series)) {
        let parsed = parse(line);
        let Some(sample) = parsed.first() else {
            continue;
        };
        if sample.name == series
            && labels
                .iter()
                .all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
        {
            let value = line
                .split(" # ")
                .next()
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or_default();
            total += value.parse::<f64>()?;
        }
    }
    Ok(total)
}

fn is_trace_id(value: &str) -> bool {
    value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) && value != "0".repeat(32)
}

/// SendMessage (and its empty-message failure), Search and ListMessages
/// as `alice` of a fresh tenant; returns the tenant and the conversation.
async fn exercise(app: &TestApp, secret: &str) -> anyhow::Result<(String, String)> {
    let (tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    send(&mut client, &id, secret, "").await?;
    let empty = send(&mut client, &id, "", "")
        .await
        .expect_err("an empty message is refused");
    assert_eq!(empty.code(), Code::InvalidArgument);
    app.knowledge(&token)
        .await?
        .search(pb::SearchRequest {
            query: "our SLO keeps paging the on-call engineers".into(),
            limit: 3,
            kinds: vec![],
        })
        .await?;
    client
        .list_messages(pb::ListMessagesRequest {
            conversation_id: id.clone(),
            page_size: 10,
            page_token: String::new(),
            ..Default::default()
        })
        .await?;
    Ok((tenant.to_string(), id))
}

#[tokio::test]
async fn rpc_metrics_health_and_canonical_events() -> anyhow::Result<()> {
    // Installs the OpenTelemetry layer (so calls have trace ids) and
    // captures canonical events.
    let telemetry = tp_telemetry::init_for_tests();
    let app = TestApp::spawn().await?;
    let secret = "Our on-call rota has burnt out two seniors since the reorg";
    let (tenant, conversation_id) = exercise(&app, secret).await?;
    // A call with a token the gateway cannot verify.
    let refused = app
        .conversations_with_auth(Some("Bearer not.a.token"))
        .await?
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .expect_err("a bad token is refused");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The gateway: fully-qualified methods, status names, the tenant.
    let gateway = scrape_until(app.gateway_http_addr, |s| {
        !buckets(s, "rpc_server_call_duration_seconds", SEND, Some("OK")).is_empty()
    })
    .await?;
    let metric = "rpc_server_call_duration_seconds";
    for (method, code) in [(SEND, "OK"), (SEARCH, "OK"), (SEND, "INVALID_ARGUMENT")] {
        let series = buckets(&gateway, metric, method, Some(code));
        assert!(!series.is_empty(), "gateway: no {method} {code} series");
        for sample in series {
            assert_eq!(sample.labels["rpc_system_name"], "grpc");
            assert_eq!(sample.labels["tp_component"], "gateway");
            assert_eq!(sample.labels["tp_tenant_id"], tenant);
            // A client error spends no error budget.
            assert!(
                !sample.labels.contains_key("error_type"),
                "{method} {code} has error.type: {sample:?}"
            );
        }
    }
    // Streaming calls: time to the first reply event, at both hops.
    assert!(
        !buckets(
            &gateway,
            "tp_rpc_server_time_to_first_message_seconds",
            SEND,
            None
        )
        .is_empty(),
        "gateway: no time to first message"
    );
    // The gateway's own outgoing hop.
    assert!(
        !buckets(
            &gateway,
            "rpc_client_call_duration_seconds",
            SEND,
            Some("OK")
        )
        .is_empty(),
        "gateway: no client-side SendMessage"
    );
    // Pool gauges, sampled at scrape time.
    assert!(
        gateway.iter().any(|s| s.name == "db_client_connection_max"
            && s.labels
                .get("db_client_connection_pool_name")
                .map(String::as_str)
                == Some("gateway")),
        "gateway: no pool gauge"
    );

    // Authentication, by mode and outcome: the caller's bad token is
    // `rejected`, not an error of ours.
    for outcome in ["accepted", "rejected"] {
        assert!(
            !with_labels(
                &gateway,
                "tp_auth_duration_seconds_bucket",
                &[("tp_auth_mode", "hs256"), ("tp_auth_outcome", outcome)]
            )
            .is_empty(),
            "gateway: no tp.auth.duration {outcome}"
        );
    }
    assert!(
        with_labels(
            &gateway,
            "tp_auth_duration_seconds_bucket",
            &[("tp_auth_outcome", "error")]
        )
        .is_empty(),
        "gateway: an auth error with the IdP out of the picture"
    );
    // The access layer's read of the membership (the cache starts empty).
    assert!(
        !with_labels(
            &gateway,
            "db_client_operation_duration_seconds_bucket",
            &[
                ("db_operation_name", "lookup_membership"),
                ("db_system_name", "postgresql"),
                ("tp_component", "gateway"),
            ]
        )
        .is_empty(),
        "gateway: no db.client.operation.duration for the membership lookup"
    );

    // Internal services: their own registries, no tenant on metrics.
    let conversation = scrape_until(app.conversation_http_addr, |s| {
        !buckets(s, metric, SEND, Some("OK")).is_empty()
    })
    .await?;
    for sample in buckets(&conversation, metric, SEND, Some("OK")) {
        assert_eq!(sample.labels["tp_component"], "conversation");
        assert!(!sample.labels.contains_key("tp_tenant_id"));
    }
    assert!(!buckets(&conversation, metric, SEND, Some("INVALID_ARGUMENT")).is_empty());
    assert!(
        !buckets(
            &conversation,
            "tp_rpc_server_time_to_first_message_seconds",
            SEND,
            None
        )
        .is_empty()
    );
    assert!(
        !buckets(
            &conversation,
            "rpc_client_call_duration_seconds",
            RETRIEVE,
            Some("OK")
        )
        .is_empty(),
        "conversation: no client-side Retrieve"
    );
    assert!(
        buckets(&conversation, metric, SEARCH, None).is_empty(),
        "conversation does not serve Search"
    );
    // The stored reply, by responder.
    assert!(
        conversation
            .iter()
            .any(|s| s.name == "tp_coach_replies_total"
                && s.labels.get("tp_responder").map(String::as_str) == Some("offline")),
        "conversation: no tp.coach.replies"
    );
    // The reply's generation, by the offline coach: its duration, time to
    // first chunk and (estimated) tokens both ways, without an error.
    let offline = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "thoughtpartner.offline"),
        ("gen_ai_request_model", "coach"),
    ];
    let generations = with_labels(
        &conversation,
        "gen_ai_client_operation_duration_seconds_bucket",
        &offline,
    );
    assert!(!generations.is_empty(), "conversation: no gen_ai duration");
    assert!(
        generations
            .iter()
            .all(|s| !s.labels.contains_key("error_type")),
        "{generations:?}"
    );
    assert!(
        !with_labels(
            &conversation,
            "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
            &offline
        )
        .is_empty(),
        "conversation: no gen_ai time to first chunk"
    );
    for token_type in ["input", "output"] {
        let mut labels = offline.to_vec();
        labels.push(("gen_ai_token_type", token_type));
        assert!(
            sample_value(
                app.conversation_http_addr,
                "gen_ai_client_token_usage_sum",
                &labels
            )
            .await?
                > 0.0,
            "conversation: no {token_type} tokens"
        );
    }
    // The SendMessage's two transactions, and the ListMessages one, each
    // under its operation's name; none failed.
    for operation in ["begin_exchange", "complete_exchange", "list_messages"] {
        let series = with_labels(
            &conversation,
            "db_client_operation_duration_seconds_bucket",
            &[
                ("db_operation_name", operation),
                ("db_system_name", "postgresql"),
                ("tp_component", "conversation"),
            ],
        );
        assert!(
            !series.is_empty(),
            "conversation: no db operation {operation}"
        );
        assert!(
            series.iter().all(|s| !s.labels.contains_key("error_type")),
            "{series:?}"
        );
    }
    let knowledge = scrape_until(app.knowledge_http_addr, |s| {
        !buckets(s, metric, RETRIEVE, Some("OK")).is_empty()
    })
    .await?;
    for method in [SEARCH, RETRIEVE] {
        let series = buckets(&knowledge, metric, method, Some("OK"));
        assert!(!series.is_empty(), "knowledge: no {method}");
        assert!(
            series
                .iter()
                .all(|s| s.labels["tp_component"] == "knowledge")
        );
    }

    // Search ranks the corpus and the tenant's passages.
    for operation in ["rank_entries", "rank_passages"] {
        assert!(
            !with_labels(
                &knowledge,
                "db_client_operation_duration_seconds_bucket",
                &[
                    ("db_operation_name", operation),
                    ("tp_component", "knowledge")
                ]
            )
            .is_empty(),
            "knowledge: no db operation {operation}"
        );
    }

    // Exemplars: each service links its latencies to traces.
    for (service, samples) in [
        ("gateway", &gateway),
        ("conversation", &conversation),
        ("knowledge", &knowledge),
    ] {
        let exemplars: Vec<&BTreeMap<String, String>> = samples
            .iter()
            .filter(|s| s.name == format!("{metric}_bucket"))
            .filter_map(|s| s.exemplar.as_ref())
            .collect();
        assert!(!exemplars.is_empty(), "{service}: no exemplars");
        for exemplar in exemplars {
            let trace_id = exemplar
                .get("trace_id")
                .map(String::as_str)
                .unwrap_or_default();
            assert!(is_trace_id(trace_id), "{service}: exemplar {exemplar:?}");
        }
    }

    // Health: alive, and ready (database and gRPC health).
    for addr in [
        app.gateway_http_addr,
        app.conversation_http_addr,
        app.knowledge_http_addr,
    ] {
        assert_eq!(http_get(addr, "/healthz").await?.status, 200);
        let ready = http_get(addr, "/readyz").await?;
        assert_eq!(ready.status, 200, "{addr}: {}", ready.body);
        assert_eq!(http_get(addr, "/nope").await?.status, 404);
    }

    // The canonical events: one per call per service, with who and what.
    let events = telemetry.canonical_events();
    if events.is_empty() {
        // Another test binary's subscriber won the global slot; nothing
        // was captured to check.
        eprintln!("no canonical events captured: the global subscriber is not ours");
        return Ok(());
    }
    let field = |event: &BTreeMap<String, String>, key: &str| event.get(key).cloned();
    let gateway_sends: Vec<_> = events
        .iter()
        .filter(|e| {
            field(e, "tp.component").as_deref() == Some("gateway")
                && field(e, "rpc.method").as_deref() == Some(SEND)
                && field(e, "tp.tenant.id").as_deref() == Some(tenant.as_str())
                && field(e, "rpc.status_code").as_deref() == Some("OK")
        })
        .collect();
    assert_eq!(gateway_sends.len(), 1, "{gateway_sends:?}");
    assert_eq!(
        field(gateway_sends[0], "tp.member.id").as_deref(),
        Some("alice")
    );
    assert!(field(gateway_sends[0], "tp.call.duration_ms").is_some());
    assert!(field(gateway_sends[0], "tp.call.first_message_ms").is_some());
    assert!(field(gateway_sends[0], "error.type").is_none());

    let conversation_sends: Vec<_> = events
        .iter()
        .filter(|e| {
            field(e, "tp.component").as_deref() == Some("conversation")
                && field(e, "rpc.method").as_deref() == Some(SEND)
                && field(e, "tp.conversation.id").as_deref() == Some(conversation_id.as_str())
        })
        .collect();
    // The reply, and the refused empty message.
    assert_eq!(conversation_sends.len(), 2, "{conversation_sends:?}");
    let reply = conversation_sends
        .iter()
        .find(|e| field(e, "rpc.status_code").as_deref() == Some("OK"))
        .expect("the reply's event");
    assert_eq!(
        field(reply, "tp.tenant.id").as_deref(),
        Some(tenant.as_str())
    );
    assert_eq!(field(reply, "tp.member.id").as_deref(), Some("alice"));
    assert_eq!(field(reply, "tp.responder").as_deref(), Some("offline"));
    // How the reply came out: knowledge answered, and the offline coach
    // keeps the persona's rules.
    assert_eq!(field(reply, "tp.reply.grounded").as_deref(), Some("true"));
    assert_eq!(
        field(reply, "tp.reply.policy_violations").as_deref(),
        Some("0")
    );
    assert!(
        conversation_sends
            .iter()
            .any(|e| field(e, "rpc.status_code").as_deref() == Some("INVALID_ARGUMENT"))
    );
    let knowledge_searches = events
        .iter()
        .filter(|e| {
            field(e, "tp.component").as_deref() == Some("knowledge")
                && field(e, "rpc.method").as_deref() == Some(SEARCH)
                && field(e, "tp.tenant.id").as_deref() == Some(tenant.as_str())
        })
        .count();
    assert_eq!(knowledge_searches, 1);

    // Never the message.
    for event in &events {
        for (key, value) in event {
            assert!(
                !value.contains(secret),
                "content in the canonical event's {key}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn rate_limit_rejections_are_counted_by_scope_and_tenant() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, token) = app.tenant_with_member("Noisy", "nina").await?;
    // A user may make two calls, then one every ten seconds; the tenant's
    // limit is far away, so every refusal is the user's.
    let (gateway, http) = app
        .spawn_gateway_with_http(|config| {
            config.rate_user_per_second = 0.1;
            config.rate_user_burst = 2;
            config.rate_tenant_per_second = 100.0;
            config.rate_tenant_burst = 100;
            config.rate_hold_ms = 0;
        })
        .await?;
    let mut client = conversations_via(gateway, &token).await?;
    let mut refused = 0;
    for _ in 0..5 {
        if let Err(status) = client
            .list_conversations(pb::ListConversationsRequest::default())
            .await
        {
            assert_eq!(status.code(), Code::ResourceExhausted);
            refused += 1;
        }
    }
    assert_eq!(refused, 3);
    let tenant = tenant.to_string();
    let counted = sample_value(
        http,
        "tp_rate_limit_rejections_total",
        &[
            ("tp_limit_scope", "user"),
            ("tp_tenant_id", tenant.as_str()),
        ],
    )
    .await?;
    assert_eq!(counted, 3.0);
    let by_tenant = sample_value(
        http,
        "tp_rate_limit_rejections_total",
        &[("tp_limit_scope", "tenant")],
    )
    .await?;
    assert_eq!(by_tenant, 0.0);
    Ok(())
}

/// The names a schema declares, in the Prometheus exposition: series
/// names (with the suffixes each kind has) and label keys.
struct Declared {
    series: BTreeSet<String>,
    families: BTreeSet<String>,
    labels: BTreeMap<String, BTreeSet<String>>,
}

fn declared() -> anyhow::Result<Declared> {
    let schema: toml::Table = toml::from_str(include_str!("../../crates/telemetry/schema.toml"))?;
    let mut declared = Declared {
        series: BTreeSet::new(),
        families: BTreeSet::new(),
        labels: BTreeMap::new(),
    };
    let metrics = schema
        .get("metric")
        .and_then(|m| m.as_array())
        .ok_or_else(|| anyhow::anyhow!("schema.toml has no metrics"))?;
    for metric in metrics {
        let text = |key: &str| metric.get(key).and_then(|v| v.as_str()).unwrap_or_default();
        let mut base = text("name").replace('.', "_");
        if text("unit") == "s" {
            base.push_str("_seconds");
        }
        let mut labels: BTreeSet<String> = metric
            .get("labels")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str())
            .map(|l| l.replace('.', "_"))
            .collect();
        let series: Vec<String> = match text("kind") {
            "histogram" => {
                labels.insert("le".to_owned());
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|suffix| format!("{base}{suffix}"))
                    .collect()
            }
            "counter" => vec![format!("{base}_total")],
            _ => vec![base.clone()],
        };
        for name in series {
            declared.labels.insert(name.clone(), labels.clone());
            declared.series.insert(name);
        }
        declared.families.insert(base);
    }
    Ok(declared)
}

#[tokio::test]
async fn every_exposed_name_is_declared_in_the_schema() -> anyhow::Result<()> {
    let _telemetry = tp_telemetry::init_for_tests();
    let declared = declared()?;
    let app = TestApp::spawn().await?;
    exercise(&app, "Two of my leads want the same promotion").await?;
    // Let the streams' ends be recorded.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for addr in [
        app.gateway_http_addr,
        app.conversation_http_addr,
        app.knowledge_http_addr,
    ] {
        let reply = http_get(addr, "/metrics").await?;
        // Metadata lines name families.
        for line in reply
            .body
            .lines()
            .filter(|l| l.starts_with("# ") && *l != "# EOF")
        {
            let family = line.split_whitespace().nth(2).unwrap_or_default();
            assert!(
                declared.families.contains(family),
                "{addr}: `{line}` names an undeclared metric"
            );
        }
        let samples = parse(&reply.body);
        assert!(!samples.is_empty(), "{addr}: an empty exposition");
        for sample in samples {
            let labels = declared
                .labels
                .get(&sample.name)
                .unwrap_or_else(|| panic!("{addr}: `{}` is not in schema.toml", sample.name));
            for key in sample.labels.keys() {
                assert!(
                    labels.contains(key),
                    "{addr}: label `{key}` of `{}` is not declared for it",
                    sample.name
                );
            }
            if let Some(exemplar) = &sample.exemplar {
                assert_eq!(
                    exemplar.keys().map(String::as_str).collect::<Vec<_>>(),
                    vec!["trace_id"],
                    "{addr}: exemplar labels"
                );
            }
        }
    }
    Ok(())
}
