//! What operators see without Grafana: `OperationsService.GetSloStatus`
//! and `GET /slo` on the ops port, both from one in-memory SLI history.
//!
//! A sampler reads the cumulative counters every few seconds: the
//! gateway's own registry (encoded, as a scrape would see it) and the other
//! services' `/metrics` (`TP_SLO_SCRAPE_URLS`: the coaching SLO counts
//! replies in conversation). Which series are good and total, and all the
//! arithmetic, is `tp_slo::live`, pure and tested there; this module only
//! does the I/O and the presentation.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::{Request, Status};
use tp_proto::v1 as pb;
use tp_slo::live::{History, SliPlan, SloReport};
use tp_slo::{Exhaustion, Severity};
use tp_telemetry::Metrics;

/// The SLO specs, compiled in so the gateway measures what the generated
/// rules measure without reading files at run time. A test checks the list
/// against slo/.
pub const SPECS: &[(&str, &str)] = &[
    (
        "administration",
        include_str!("../../../slo/administration.yaml"),
    ),
    (
        "alert-policies",
        include_str!("../../../slo/alert-policies.yaml"),
    ),
    (
        "authentication",
        include_str!("../../../slo/authentication.yaml"),
    ),
    ("coaching", include_str!("../../../slo/coaching.yaml")),
    (
        "conversation",
        include_str!("../../../slo/conversation.yaml"),
    ),
    ("knowledge", include_str!("../../../slo/knowledge.yaml")),
    ("operations", include_str!("../../../slo/operations.yaml")),
    (
        "subscription",
        include_str!("../../../slo/subscription.yaml"),
    ),
];

/// Series (an SLO over the service, or over one tenant) the history keeps;
/// with at most ~1,900 snapshots of 16 bytes per series, about 30 MB at
/// worst, a few MB for a typical few dozen active tenants.
pub const MAX_SERIES: usize = 1_000;

/// How long one scrape of another service may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest exposition read from another service.
const MAX_SCRAPE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SloStatusError {
    #[error("the SLO specs compiled into the gateway are invalid: {0}")]
    Specs(#[from] tp_slo::SloError),
    #[error("TP_SLO_SCRAPE_URLS: {0:?} is not an http://host:port/path URL")]
    ScrapeUrl(String),
}

/// One `/metrics` to read: `host:port` and path, plain HTTP (ops ports
/// listen on loopback).
#[derive(Debug, Clone, PartialEq)]
struct ScrapeTarget {
    authority: String,
    path: String,
}

fn parse_scrape_urls(urls: &str) -> Result<Vec<ScrapeTarget>, SloStatusError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| SloStatusError::ScrapeUrl(url.to_owned()))?;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/metrics"),
            };
            if authority.is_empty() || !authority.contains(':') {
                return Err(SloStatusError::ScrapeUrl(url.to_owned()));
            }
            Ok(ScrapeTarget {
                authority: authority.to_owned(),
                path: path.to_owned(),
            })
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {} s", SCRAPE_TIMEOUT.as_secs())]
    Timeout,
    #[error("answered {0}")]
    Status(String),
    #[error("exposition larger than {MAX_SCRAPE_BYTES} bytes")]
    TooLarge,
}

/// GET over HTTP/1.0, so the answer ends with the connection: no chunked
/// decoding, and no HTTP client dependency for one loopback request.
async fn scrape(target: &ScrapeTarget) -> Result<String, ScrapeError> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(&target.authority).await?;
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
            target.path, target.authority
        );
        stream.write_all(request.as_bytes()).await?;
        let mut body = Vec::new();
        let mut limited = stream.take(MAX_SCRAPE_BYTES as u64 + 1);
        limited.read_to_end(&mut body).await?;
        if body.len() > MAX_SCRAPE_BYTES {
            return Err(ScrapeError::TooLarge);
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(ScrapeError::Status(status.to_owned()));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .map_err(|_| ScrapeError::Timeout)?
}

/// `2026-11-30 23:19:32 UTC`, for the page.
fn utc(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map_or_else(
        |_| format!("{unix} (Unix seconds)"),
        |t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        },
    )
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The SLO plan, the history and where the counts come from.
pub struct SloMonitor {
    plan: Arc<SliPlan>,
    history: Mutex<History>,
    metrics: Metrics,
    targets: Vec<ScrapeTarget>,
    /// Which targets failed last time, so a dead service is logged once
    /// per outage rather than every sample.
    failing: Mutex<Vec<bool>>,
}

impl SloMonitor {
    pub fn new(metrics: Metrics, scrape_urls: &str) -> Result<Self, SloStatusError> {
        let sources: Vec<(String, String)> = SPECS
            .iter()
            .map(|(stem, text)| ((*stem).to_owned(), (*text).to_owned()))
            .collect();
        let catalog = tp_slo::Catalog::resolve(&tp_slo::generate::parse_spec_files(&sources)?)?;
        let longest = catalog
            .slos
            .iter()
            .map(|s| s.window)
            .max()
            .unwrap_or(tp_slo::Duration::days(28));
        let targets = parse_scrape_urls(scrape_urls)?;
        let plan = Arc::new(SliPlan::new(&catalog));
        Ok(Self {
            history: Mutex::new(History::new(longest, targets.len() + 1, MAX_SERIES)),
            failing: Mutex::new(vec![false; targets.len()]),
            plan,
            metrics,
            targets,
        })
    }

    /// Reads every source once and records the sample.
    pub async fn sample(&self) {
        let mut readings = Vec::with_capacity(self.targets.len() + 1);
        // The gateway's own exposition (every tenant's series) is read as
        // it is written, a line at a time, never held whole. With 1,000
        // tenants that is tens of MB of text, milliseconds of CPU: on a
        // blocking thread, so a gateway on one worker thread (as deployed)
        // keeps serving calls meanwhile.
        let (plan, metrics) = (self.plan.clone(), self.metrics);
        let own = tokio::task::spawn_blocking(move || {
            let mut own = SelectedLines {
                plan: &plan,
                line: String::new(),
                samples: Vec::new(),
            };
            metrics
                .encode_to(&mut own)
                .map(|()| plan.read(&own.finish()))
        })
        .await;
        readings.push(match own {
            Ok(Ok(reading)) => Some(reading),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "SLO sampler: encoding the gateway's metrics failed");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "SLO sampler: reading the gateway's metrics failed");
                None
            }
        });
        for (i, target) in self.targets.iter().enumerate() {
            let result = scrape(target).await;
            let failed = result.is_err();
            let was_failing = self
                .failing
                .lock()
                .ok()
                .and_then(|mut f| f.get_mut(i).map(|slot| std::mem::replace(slot, failed)))
                .unwrap_or(false);
            match result {
                Ok(text) => {
                    if was_failing {
                        tracing::info!(target = %target.authority, "SLO sampler: scraping again");
                    }
                    // Parsing another service's exposition is CPU work
                    // too: off the worker threads, as above.
                    let plan = self.plan.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        plan.read(&plan.selected_samples(&text))
                    })
                    .await;
                    readings.push(read.ok());
                }
                Err(e) => {
                    if !was_failing {
                        tracing::warn!(target = %target.authority, path = %target.path, error = %e,
                            "SLO sampler: scrape failed; its SLOs count nothing until it answers");
                    }
                    readings.push(None);
                }
            }
        }
        let now = now_unix();
        if let Ok(mut history) = self.history.lock() {
            history.record(now, readings);
        }
    }

    /// Samples now and then every `interval`, until the task is aborted.
    pub fn spawn_sampler(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.sample().await;
            }
        })
    }

    /// Every SLO (or, with a tenant, those broken down by tenant), and the
    /// history's span.
    fn reports(&self, tenant: Option<&str>) -> Result<Snapshot, Status> {
        let history = self
            .history
            .lock()
            .map_err(|_| Status::internal("the SLO history is unavailable; retry"))?;
        let reports = self
            .plan
            .slos()
            .iter()
            .enumerate()
            .filter(|(_, slo)| tenant.is_none() || slo.breakdown.is_some())
            .map(|(i, _)| self.plan.report(&history, i, tenant))
            .collect();
        Ok(Snapshot {
            reports,
            span: history.span(),
            untracked: history.untracked(),
        })
    }
}

/// Collects the samples an SLI selects from an exposition written into it.
struct SelectedLines<'a> {
    plan: &'a SliPlan,
    line: String,
    samples: Vec<tp_slo::live::Sample>,
}

impl SelectedLines<'_> {
    fn finish(mut self) -> Vec<tp_slo::live::Sample> {
        let rest = std::mem::take(&mut self.line);
        self.samples.extend(self.plan.selected_sample(&rest));
        self.samples
    }
}

impl std::fmt::Write for SelectedLines<'_> {
    fn write_str(&mut self, mut s: &str) -> std::fmt::Result {
        while let Some(end) = s.find('\n') {
            self.line.push_str(&s[..end]);
            self.samples.extend(self.plan.selected_sample(&self.line));
            self.line.clear();
            s = &s[end + 1..];
        }
        self.line.push_str(s);
        Ok(())
    }
}

struct Snapshot {
    reports: Vec<SloReport>,
    span: Option<(i64, i64)>,
    untracked: u64,
}

fn duration(d: tp_slo::Duration) -> prost_types::Duration {
    seconds(i64::try_from(d.seconds()).unwrap_or(i64::MAX))
}

fn seconds(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

fn timestamp(unix: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix,
        nanos: 0,
    }
}

/// `GetSloStatus`, for operators (the policy table admits no one else).
pub struct Operations {
    monitor: Arc<SloMonitor>,
}

impl Operations {
    pub fn new(monitor: Arc<SloMonitor>) -> Self {
        Self { monitor }
    }
}

fn to_proto(plan: &SliPlan, report: &SloReport) -> pb::SloStatus {
    let slo = &plan.slos()[report.slo];
    let (outlook, within) = match report.exhaustion {
        Exhaustion::Never => (pb::budget_exhaustion::Outlook::Never, None),
        Exhaustion::Exhausted => (pb::budget_exhaustion::Outlook::Exhausted, None),
        Exhaustion::InSeconds(s) => (
            pb::budget_exhaustion::Outlook::Projected,
            Some(seconds(s.min(i64::MAX as f64) as i64)),
        ),
    };
    pb::SloStatus {
        name: slo.name.clone(),
        display_name: slo.display_name.clone(),
        description: slo.description.clone(),
        service: slo.service.clone(),
        target: slo.objective.target(),
        window: Some(duration(slo.window)),
        covered: Some(seconds(report.covered_seconds)),
        good_events: report.counts.good,
        total_events: report.counts.total,
        sli: report.sli,
        error_budget_remaining: report.budget_remaining,
        burn_rates: report
            .burn_rates
            .iter()
            .map(|b| pb::WindowBurnRate {
                window: Some(duration(b.window)),
                good_events: b.counts.good,
                total_events: b.counts.total,
                burn_rate: b.burn_rate,
            })
            .collect(),
        alerts: report
            .alerts
            .iter()
            .map(|a| pb::BurnRateAlert {
                name: a.name.clone(),
                severity: match a.alert.severity {
                    Severity::Page => pb::AlertSeverity::Page,
                    Severity::Ticket => pb::AlertSeverity::Ticket,
                } as i32,
                threshold: a.alert.burn_rate,
                long_window: Some(duration(a.alert.long)),
                short_window: Some(duration(a.alert.short)),
                firing: a.firing,
            })
            .collect(),
        exhaustion: Some(pb::BudgetExhaustion {
            outlook: outlook as i32,
            r#in: within,
        }),
        evaluable: report.evaluable,
    }
}

#[tonic::async_trait]
impl pb::operations_service_server::OperationsService for Operations {
    async fn get_slo_status(
        &self,
        request: Request<pb::GetSloStatusRequest>,
    ) -> Result<tonic::Response<pb::GetSloStatusResponse>, Status> {
        let tenant_id = request.into_inner().tenant_id;
        let tenant = if tenant_id.is_empty() {
            None
        } else {
            let parsed: tp_context::TenantId = tenant_id.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "tenant_id {tenant_id:?} is not a tenant id (a UUID); leave it empty for the whole service"
                ))
            })?;
            Some(parsed.to_string())
        };
        let snapshot = self.monitor.reports(tenant.as_deref())?;
        let (start, at) = snapshot.span.unwrap_or((0, 0));
        Ok(tonic::Response::new(pb::GetSloStatusResponse {
            slos: snapshot
                .reports
                .iter()
                .map(|r| to_proto(&self.monitor.plan, r))
                .collect(),
            tenant_id: tenant.unwrap_or_default(),
            evaluated_at: snapshot.span.map(|_| timestamp(at)),
            history_start: snapshot.span.map(|_| timestamp(start)),
            untracked_increases: snapshot.untracked,
        }))
    }
}

/// The path of the status page on the ops port.
pub const PAGE_PATH: &str = "/slo";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn percent(x: f64) -> String {
    format!("{:.3} %", x * 100.0)
}

fn human(seconds: f64) -> String {
    if seconds >= 86_400.0 {
        format!("{:.1} d", seconds / 86_400.0)
    } else if seconds >= 3_600.0 {
        format!("{:.1} h", seconds / 3_600.0)
    } else {
        format!("{:.0} min", seconds / 60.0)
    }
}

/// The status page: self-contained HTML (no scripts, no external assets),
/// refreshing itself every `refresh_secs`.
pub fn render_page(monitor: &SloMonitor, refresh_secs: u64) -> Result<String, Status> {
    let snapshot = monitor.reports(None)?;
    let mut html = String::new();
    let as_of = snapshot.span.map_or_else(
        || "no sample yet".to_owned(),
        |(start, at)| format!("as of {}, history since {}", utc(at), utc(start)),
    );
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{refresh_secs}\">\
         <title>Thoughtpartner SLO status</title><style>\
         body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}}\
         .bar{{width:160px;height:12px;background:#eee;border:1px solid #bbb}}.fill{{height:100%}}\
         .ok{{background:#3a3}}.low{{background:#e90}}.out{{background:#c22}}\
         .page{{color:#fff;background:#c22;padding:1px 4px}}.ticket{{background:#e90;padding:1px 4px}}\
         .quiet{{color:#888}}small{{color:#666}}</style></head><body>\
         <h1>SLO status</h1><p><small>Computed by this gateway from the services' own counters, {}; \
         windows longer than the history cover only what exists since it started.{}</small></p>\
         <table><tr><th>SLO</th><th>Target</th><th>SLI (window so far)</th><th>Error budget</th>\
         <th>Burn rate per window</th><th>Alerts</th><th>Exhausted in</th></tr>",
        escape(&as_of),
        if snapshot.untracked > 0 {
            " Some series were over the cap and are not counted."
        } else {
            ""
        }
    );
    for report in &snapshot.reports {
        let slo = &monitor.plan.slos()[report.slo];
        let remaining = report.budget_remaining;
        let class = if remaining <= 0.0 {
            "out"
        } else if remaining < 0.25 {
            "low"
        } else {
            "ok"
        };
        let width = (remaining.clamp(0.0, 1.0) * 100.0).round();
        let sli = report.sli.map_or_else(
            || "no events".to_owned(),
            |s| {
                format!(
                    "{} ({} of {})",
                    percent(s),
                    report.counts.good,
                    report.counts.total
                )
            },
        );
        let burns: Vec<String> = report
            .burn_rates
            .iter()
            .map(|b| format!("{}: {:.2}", b.window, b.burn_rate))
            .collect();
        let alerts: Vec<String> = report
            .alerts
            .iter()
            .map(|a| {
                if a.firing {
                    format!(
                        "<span class=\"{0}\">{1} firing</span>",
                        a.alert.severity.as_str(),
                        escape(&a.name)
                    )
                } else {
                    format!("<span class=\"quiet\">{}</span>", escape(&a.name))
                }
            })
            .collect();
        let exhaustion = match report.exhaustion {
            Exhaustion::Never => "never".to_owned(),
            Exhaustion::Exhausted => "exhausted".to_owned(),
            Exhaustion::InSeconds(s) => human(s),
        };
        let _ = write!(
            html,
            "<tr><td><b>{}</b><br><code>{}</code>{}</td><td>{} over {}</td><td>{}</td>\
             <td><div class=\"bar\"><div class=\"fill {class}\" style=\"width:{width}%\"></div></div>{}</td>\
             <td><small>{}</small></td><td>{}</td><td>{}</td></tr>",
            escape(&slo.display_name),
            escape(&slo.name),
            if report.evaluable {
                ""
            } else {
                "<br><small>not evaluable here</small>"
            },
            percent(slo.objective.target()),
            slo.window,
            sli,
            percent(remaining),
            burns.join("<br>"),
            alerts.join(" "),
            exhaustion,
        );
    }
    html.push_str("</table></body></html>\n");
    Ok(html)
}

type HttpResponse = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// The ops port's routes beyond tp-server's: `GET /slo`, then `next` (the
/// Stripe webhooks) or 404 for anything else.
pub fn routes(
    monitor: Arc<SloMonitor>,
    refresh_secs: u64,
    next: Option<tp_server::HttpFallback>,
) -> tp_server::HttpFallback {
    Arc::new(move |request| {
        let monitor = monitor.clone();
        let next = next.clone();
        Box::pin(async move {
            if request.uri().path() != PAGE_PATH {
                return match next {
                    Some(next) => next(request).await,
                    None => respond(
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "not found\n".to_owned(),
                    ),
                };
            }
            if request.method() != Method::GET && request.method() != Method::HEAD {
                return respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain; charset=utf-8",
                    "use GET\n".to_owned(),
                );
            }
            match render_page(&monitor, refresh_secs) {
                Ok(html) => respond(StatusCode::OK, "text/html; charset=utf-8", html),
                Err(status) => respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("{}\n", status.message()),
                ),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This package's directory, read when the test runs (cargo sets it for
    /// the test process): a test binary built in another checkout that shares
    /// the target directory is reused as fresh, and the compile-time value
    /// would point it at that checkout's files.
    fn manifest_dir() -> std::path::PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
    }

    #[test]
    fn every_spec_file_is_compiled_in() {
        let dir = manifest_dir().join("../../slo");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("slo/ exists")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".yaml").map(str::to_owned)
            })
            .collect();
        on_disk.sort();
        let compiled: Vec<String> = SPECS.iter().map(|(s, _)| (*s).to_owned()).collect();
        assert_eq!(compiled, on_disk);
    }

    #[test]
    fn scrape_urls_are_checked() {
        let targets =
            parse_scrape_urls("http://127.0.0.1:50062/metrics, http://127.0.0.1:50063").unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1].path, "/metrics");
        assert!(parse_scrape_urls("").unwrap().is_empty());
        for bad in ["https://x:1/metrics", "127.0.0.1:50062", "http:///metrics"] {
            assert!(parse_scrape_urls(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_page_lists_every_slo_and_counts_the_gateways_calls() {
        let metrics = Metrics::new("gateway");
        let monitor = SloMonitor::new(metrics, "").unwrap();
        monitor.sample().await;
        let html = render_page(&monitor, 10).unwrap();
        for slo in monitor.plan.slos() {
            assert!(html.contains(&escape(&slo.name)), "{} missing", slo.name);
        }
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(!html.contains("NaN"));
        assert!(!html.contains("src=\"http"), "no external assets");
    }

    #[test]
    fn an_exposition_written_in_pieces_selects_what_the_whole_text_selects() {
        let monitor = SloMonitor::new(Metrics::new("gateway"), "").unwrap();
        let mut text = String::from("# TYPE rpc_server_call_duration_seconds histogram\n");
        for tenant in ["t1", "t2"] {
            for le in ["0.005", "0.1", "0.25", "0.5", "1.0", "2.5", "+Inf"] {
                text.push_str(&format!(
                    "rpc_server_call_duration_seconds_bucket{{le=\"{le}\",rpc_method=\"thoughtpartner.v1.ConversationService/ListMessages\",\
                     rpc_status_code=\"OK\",rpc_system_name=\"grpc\",tp_component=\"gateway\",tp_tenant_id=\"{tenant}\"}} 7\n"
                ));
            }
            text.push_str(&format!(
                "rpc_server_call_duration_seconds_count{{rpc_method=\"thoughtpartner.v1.ConversationService/ListMessages\",\
                 rpc_status_code=\"OK\",rpc_system_name=\"grpc\",tp_component=\"gateway\",tp_tenant_id=\"{tenant}\"}} 7\n"
            ));
        }
        text.push_str("# EOF");
        let whole = monitor.plan.selected_samples(&text);
        assert!(
            !whole.is_empty(),
            "the ListMessages SLOs select some of these"
        );
        for piece in [1, 7, 64, 1000] {
            let mut lines = SelectedLines {
                plan: &monitor.plan,
                line: String::new(),
                samples: Vec::new(),
            };
            let bytes = text.as_bytes();
            for chunk in bytes.chunks(piece) {
                // ASCII only, so any split is on a character boundary.
                std::fmt::Write::write_str(&mut lines, std::str::from_utf8(chunk).unwrap())
                    .unwrap();
            }
            assert_eq!(lines.finish(), whole, "written {piece} bytes at a time");
        }
    }
}
