//! SLIs computed from the services' own counters, without Prometheus: for
//! operators who have no Grafana (the gateway's `GetSloStatus` and `/slo`).
//!
//! Pure, like the rest of the crate: [`parse_exposition`] reads OpenMetrics
//! text someone else fetched; [`SliPlan`] says which series of it count as
//! good and total for each SLO (from the catalog's selectors, so the live
//! view measures exactly what the generated Prometheus rules measure);
//! [`History`] keeps bounded snapshots of the counts and differences them
//! over any window; [`SliPlan::report`] turns that into the error-budget
//! numbers of [`crate::maths`]. Time is an argument everywhere.

use std::collections::{HashMap, VecDeque};

use crate::catalog::{Catalog, Ratio, SloDefinition, TENANT_LABEL};
use crate::duration::Duration;
use crate::maths::{
    Exhaustion, budget_remaining, burn_rate, decide_alerts, error_ratio, project_exhaustion,
};
use crate::selector::{MatchOp, Selector};

/// The label naming an RPC, which most SLIs select on.
const RPC_METHOD: &str = "rpc_method";

/// One sample of an exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The label's value; absent labels read as empty, as in PromQL.
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(label, _)| label == name)
            .map_or("", |(_, value)| value.as_str())
    }
}

/// The samples of a Prometheus or OpenMetrics text exposition whose metric
/// name `keep` accepts (so a large exposition is not copied whole).
/// Comments, exemplars and timestamps are ignored; a malformed line is
/// skipped rather than failing the rest, as one bad series should not hide
/// every SLO.
pub fn parse_exposition(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| parse_line(line, &keep))
        .collect()
}

fn parse_line(line: &str, keep: &impl Fn(&str) -> bool) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !keep(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        loop {
            // label name
            let mut label = String::new();
            let mut closed = None;
            for (i, c) in chars.by_ref() {
                match c {
                    '=' => break,
                    '}' if label.trim().is_empty() => {
                        closed = Some(i);
                        break;
                    }
                    ',' | ' ' => {}
                    c => label.push(c),
                }
            }
            if let Some(i) = closed {
                rest = &body[i + 1..];
                break;
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    c => value.push(c),
                }
            }
            labels.push((label, value));
        }
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A selector's matcher, compiled. Regular expressions are supported only
/// as alternations of literals (`1|1\.0`), the form our specs use for
/// bucket bounds; anything else makes the SLO unevaluable here, rather than
/// silently evaluated differently from Prometheus.
#[derive(Debug, Clone)]
struct CompiledMatcher {
    label: String,
    negate: bool,
    any_of: Vec<String>,
}

fn literal_alternatives(regex: &str) -> Option<Vec<String>> {
    let mut alternatives = vec![String::new()];
    let mut chars = regex.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => alternatives.last_mut()?.push(chars.next()?),
            '|' => alternatives.push(String::new()),
            '.' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' => return None,
            c => alternatives.last_mut()?.push(c),
        }
    }
    Some(alternatives)
}

#[derive(Debug, Clone)]
struct CompiledSelector {
    metric: String,
    matchers: Vec<CompiledMatcher>,
}

impl CompiledSelector {
    fn compile(selector: &Selector) -> Option<Self> {
        let matchers = selector
            .matchers
            .iter()
            .map(|m| {
                let (negate, any_of) = match m.op {
                    MatchOp::Equal => (false, vec![m.value.clone()]),
                    MatchOp::NotEqual => (true, vec![m.value.clone()]),
                    MatchOp::Regex => (false, literal_alternatives(&m.value)?),
                    MatchOp::NotRegex => (true, literal_alternatives(&m.value)?),
                };
                Some(CompiledMatcher {
                    label: m.label.clone(),
                    negate,
                    any_of,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            metric: selector.metric.clone(),
            matchers,
        })
    }

    /// The value of an equality matcher on `label`.
    fn equal(&self, label: &str) -> Option<&str> {
        self.matchers
            .iter()
            .find(|m| m.label == label && !m.negate && m.any_of.len() == 1)
            .map(|m| m.any_of[0].as_str())
    }

    fn matches(&self, sample: &Sample) -> bool {
        sample.name == self.metric
            && self.matchers.iter().all(|m| {
                let value = sample.label(&m.label);
                m.any_of.iter().any(|v| v == value) != m.negate
            })
    }
}

#[derive(Debug, Clone)]
enum CompiledRatio {
    Good {
        good: CompiledSelector,
        total: CompiledSelector,
    },
    Bad {
        bad: CompiledSelector,
        total: CompiledSelector,
    },
}

/// Good and total events: cumulative counts, or their increase over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub good: u64,
    pub total: u64,
}

/// What a count is of: one SLO, over the whole service or one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The SLO's position in the catalog.
    pub slo: usize,
    pub tenant: Option<String>,
}

/// One SLO's good/total counts per key, read from one set of samples.
pub type Reading = HashMap<Key, Counts>;

/// Which series count for each SLO of a catalog.
#[derive(Debug, Clone)]
pub struct SliPlan {
    slos: Vec<SloDefinition>,
    /// `None` where the SLI cannot be evaluated without Prometheus.
    ratios: Vec<Option<CompiledRatio>>,
}

impl SliPlan {
    pub fn new(catalog: &Catalog) -> Self {
        let ratios = catalog
            .slos
            .iter()
            .map(|slo| match &slo.ratio {
                Ratio::GoodOverTotal { good, total } => Some(CompiledRatio::Good {
                    good: CompiledSelector::compile(good)?,
                    total: CompiledSelector::compile(total)?,
                }),
                Ratio::BadOverTotal { bad, total } => Some(CompiledRatio::Bad {
                    bad: CompiledSelector::compile(bad)?,
                    total: CompiledSelector::compile(total)?,
                }),
            })
            .collect();
        Self {
            slos: catalog.slos.clone(),
            ratios,
        }
    }

    pub fn slos(&self) -> &[SloDefinition] {
        &self.slos
    }

    /// Whether the SLO at `slo` can be computed from expositions.
    pub fn evaluable(&self, slo: usize) -> bool {
        self.ratios.get(slo).is_some_and(Option::is_some)
    }

    /// Whether any SLO reads the metric `name` (to filter expositions).
    pub fn reads_metric(&self, name: &str) -> bool {
        self.ratios.iter().flatten().any(|ratio| match ratio {
            CompiledRatio::Good { good: a, total: b } | CompiledRatio::Bad { bad: a, total: b } => {
                a.metric == name || b.metric == name
            }
        })
    }

    /// The samples of an exposition that some SLI selects. A gateway that
    /// has seen many tenants exposes hundreds of thousands of series, most
    /// of them histogram buckets no SLO reads; keeping every sample of the
    /// metrics the SLOs name cost ~100 MiB of gateway RSS at each sample
    /// with 1,000 tenants (measured with `tp-loadgen`), keeping only the
    /// selected ones a few MiB.
    pub fn selected_samples(&self, text: &str) -> Vec<Sample> {
        text.lines()
            .filter_map(|line| self.selected_sample(line))
            .collect()
    }

    /// One line of an exposition, if it is a sample some SLI selects.
    pub fn selected_sample(&self, line: &str) -> Option<Sample> {
        if line.starts_with('#') || line.trim().is_empty() {
            return None;
        }
        parse_line(line, &|name: &str| self.reads_metric(name)).filter(|s| self.selects(s))
    }

    fn selects(&self, sample: &Sample) -> bool {
        self.ratios.iter().flatten().any(|ratio| match ratio {
            CompiledRatio::Good { good: a, total: b } | CompiledRatio::Bad { bad: a, total: b } => {
                a.matches(sample) || b.matches(sample)
            }
        })
    }

    /// The cumulative counts in `samples`, per SLO and, for SLOs broken
    /// down by tenant, per `tp_tenant_id` too.
    pub fn read(&self, samples: &[Sample]) -> Reading {
        // Summed as (selected, total) first: for bad-over-total SLOs good
        // is total minus bad, known only once both sums are complete.
        let mut sums: HashMap<Key, (f64, f64)> = HashMap::new();
        // Samples by metric and method: nearly every SLI names one RPC, and
        // a gateway with many tenants exposes hundreds of thousands of
        // series, so no SLO scans them all.
        let mut by_method: HashMap<&str, HashMap<&str, Vec<&Sample>>> = HashMap::new();
        let mut by_metric: HashMap<&str, Vec<&Sample>> = HashMap::new();
        for sample in samples {
            by_method
                .entry(sample.name.as_str())
                .or_default()
                .entry(sample.label(RPC_METHOD))
                .or_default()
                .push(sample);
            by_metric
                .entry(sample.name.as_str())
                .or_default()
                .push(sample);
        }
        fn candidates<'a>(
            selector: &CompiledSelector,
            by_method: &'a HashMap<&str, HashMap<&str, Vec<&'a Sample>>>,
            by_metric: &'a HashMap<&str, Vec<&'a Sample>>,
        ) -> &'a [&'a Sample] {
            let group = match selector.equal(RPC_METHOD) {
                Some(method) => by_method
                    .get(selector.metric.as_str())
                    .and_then(|methods| methods.get(method)),
                None => by_metric.get(selector.metric.as_str()),
            };
            group.map_or(&[], Vec::as_slice)
        }
        for (index, ratio) in self.ratios.iter().enumerate() {
            let Some(ratio) = ratio else { continue };
            let by_tenant = self.slos[index].breakdown.as_deref() == Some(TENANT_LABEL);
            let (selected, total) = match ratio {
                CompiledRatio::Good { good, total } => (good, total),
                CompiledRatio::Bad { bad, total } => (bad, total),
            };
            let whole = Key {
                slo: index,
                tenant: None,
            };
            sums.entry(whole.clone()).or_default();
            // Each sample once: the two groups are the same when both
            // selectors name the same metric and method.
            let mut pool: Vec<&Sample> = candidates(total, &by_method, &by_metric).to_vec();
            let same_group = selected.metric == total.metric
                && selected.equal(RPC_METHOD) == total.equal(RPC_METHOD);
            if !same_group {
                pool.extend_from_slice(candidates(selected, &by_method, &by_metric));
            }
            for sample in pool {
                if !sample.value.is_finite() || sample.value < 0.0 {
                    continue;
                }
                let in_selected = selected.matches(sample);
                let in_total = total.matches(sample);
                if !in_selected && !in_total {
                    continue;
                }
                let mut keys = vec![whole.clone()];
                let tenant = sample.label(TENANT_LABEL);
                if by_tenant && !tenant.is_empty() {
                    keys.push(Key {
                        slo: index,
                        tenant: Some(tenant.to_owned()),
                    });
                }
                for key in keys {
                    let entry = sums.entry(key).or_default();
                    if in_selected {
                        entry.0 += sample.value;
                    }
                    if in_total {
                        entry.1 += sample.value;
                    }
                }
            }
        }
        sums.into_iter()
            .map(|(key, (selected, total))| {
                let (selected, total) = (selected.round() as u64, total.round() as u64);
                let good = match self.ratios[key.slo] {
                    Some(CompiledRatio::Bad { .. }) => total.saturating_sub(selected),
                    _ => selected.min(total),
                };
                (key, Counts { good, total })
            })
            .collect()
    }
}

/// How often snapshots are kept, and for how long, per tier: fine ones for
/// the short alert windows, coarser ones for the long windows, so the
/// history's size does not depend on the sampling interval.
#[derive(Debug, Clone, Copy)]
struct Tier {
    spacing: u64,
    retention: u64,
}

const TIERS: [Tier; 3] = [
    // 5m, 30m, 1h windows: within 10 s.
    Tier {
        spacing: 10,
        retention: 3_600,
    },
    // 2h to 3d windows: within 5 minutes.
    Tier {
        spacing: 300,
        retention: 3 * 86_400,
    },
    // The SLO window (28 days): within an hour. Retention is set from the
    // longest SLO window.
    Tier {
        spacing: 3_600,
        retention: 28 * 86_400,
    },
];

#[derive(Debug, Clone)]
struct Snapshot {
    /// Unix seconds.
    at: i64,
    /// Accumulated counts by key index; keys added later are missing (0).
    counts: Vec<Counts>,
}

/// Bounded snapshots of accumulated counts. Counts are accumulated from
/// each source's increases, so a restarted service (its counters back to
/// zero) or a failed scrape (its series missing once) never makes a window
/// negative or counts twice; the first reading of a source is only its
/// baseline, so nothing from before the history started is counted.
///
/// Memory: at most `max_keys` keys (an SLO over the whole service, or over
/// one tenant), each 16 bytes in each of at most [`History::max_snapshots`]
/// snapshots; keys beyond the cap are not tracked (counted in
/// [`History::untracked`]).
#[derive(Debug)]
pub struct History {
    tiers: Vec<(Tier, VecDeque<Snapshot>)>,
    latest: Option<Snapshot>,
    keys: Vec<Key>,
    index: HashMap<Key, usize>,
    max_keys: usize,
    untracked: u64,
    previous: Vec<Option<Reading>>,
    accumulated: Vec<Counts>,
}

impl History {
    /// `longest_window`: the longest SLO window, how far back the coarse
    /// tier reaches; `sources`: how many expositions feed each sample.
    pub fn new(longest_window: Duration, sources: usize, max_keys: usize) -> Self {
        let mut tiers: Vec<(Tier, VecDeque<Snapshot>)> =
            TIERS.iter().map(|t| (*t, VecDeque::new())).collect();
        if let Some((coarse, _)) = tiers.last_mut() {
            coarse.retention = longest_window.seconds().max(coarse.retention);
        }
        Self {
            tiers,
            latest: None,
            keys: Vec::new(),
            index: HashMap::new(),
            max_keys,
            untracked: 0,
            previous: vec![None; sources],
            accumulated: Vec::new(),
        }
    }

    /// The most snapshots ever kept (for the memory bound).
    pub fn max_snapshots(&self) -> usize {
        self.tiers
            .iter()
            .map(|(tier, _)| (tier.retention / tier.spacing + 2) as usize)
            .sum::<usize>()
            + 1
    }

    /// How many increases were dropped because their key was over the cap.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    pub fn tracked_keys(&self) -> usize {
        self.keys.len()
    }

    /// When the history starts (Unix seconds), and its last sample.
    pub fn span(&self) -> Option<(i64, i64)> {
        let latest = self.latest.as_ref()?;
        let first = self
            .tiers
            .iter()
            .filter_map(|(_, snaps)| snaps.front())
            .map(|s| s.at)
            .min()
            .unwrap_or(latest.at);
        Some((first, latest.at))
    }

    fn key_index(&mut self, key: &Key) -> Option<usize> {
        if let Some(i) = self.index.get(key) {
            return Some(*i);
        }
        if self.keys.len() >= self.max_keys {
            self.untracked += 1;
            return None;
        }
        let i = self.keys.len();
        self.keys.push(key.clone());
        self.index.insert(key.clone(), i);
        self.accumulated.push(Counts::default());
        Some(i)
    }

    /// Records one sample at `now` (Unix seconds): each source's reading,
    /// `None` for a source that could not be read this time.
    pub fn record(&mut self, now: i64, readings: Vec<Option<Reading>>) {
        for (source, reading) in readings.into_iter().enumerate() {
            let Some(reading) = reading else { continue };
            if source >= self.previous.len() {
                self.previous.resize(source + 1, None);
            }
            if let Some(previous) = self.previous[source].take() {
                for (key, current) in &reading {
                    let increase = match previous.get(key) {
                        // A counter that went down restarted from zero.
                        Some(before)
                            if current.total >= before.total && current.good >= before.good =>
                        {
                            Counts {
                                good: current.good - before.good,
                                total: current.total - before.total,
                            }
                        }
                        Some(_) | None => *current,
                    };
                    if increase == Counts::default() {
                        continue;
                    }
                    if let Some(i) = self.key_index(key) {
                        let sum = &mut self.accumulated[i];
                        sum.good = sum.good.saturating_add(increase.good);
                        sum.total = sum.total.saturating_add(increase.total);
                    }
                }
            }
            self.previous[source] = Some(reading);
        }
        let snapshot = Snapshot {
            at: now,
            counts: self.accumulated.clone(),
        };
        for (tier, snaps) in &mut self.tiers {
            let due = snaps
                .back()
                .is_none_or(|last| now - last.at >= tier.spacing as i64);
            if due {
                snaps.push_back(snapshot.clone());
            }
            // Keep one snapshot at or before the retention's start, so a
            // window of exactly the retention still has a base.
            let horizon = now - tier.retention as i64;
            while snaps.len() > 1 && snaps.get(1).is_some_and(|s| s.at <= horizon) {
                snaps.pop_front();
            }
        }
        self.latest = Some(snapshot);
    }

    /// The increase of `key` over the `window` before the last sample, and
    /// how many seconds of history that covers (less than the window while
    /// the history is younger than it: only what exists since start).
    pub fn increase(&self, key: &Key, window: Duration) -> (Counts, i64) {
        let Some(latest) = &self.latest else {
            return (Counts::default(), 0);
        };
        let start = latest.at - i64::try_from(window.seconds()).unwrap_or(i64::MAX);
        // The newest snapshot at or before the window's start, from any
        // tier; without one, the oldest there is.
        let base = self
            .tiers
            .iter()
            .filter_map(|(_, snaps)| {
                let n = snaps.partition_point(|s| s.at <= start);
                n.checked_sub(1).and_then(|i| snaps.get(i))
            })
            .max_by_key(|s| s.at)
            .or_else(|| {
                self.tiers
                    .iter()
                    .filter_map(|(_, snaps)| snaps.front())
                    .min_by_key(|s| s.at)
            });
        let Some(base) = base else {
            return (Counts::default(), 0);
        };
        let at = |snapshot: &Snapshot| {
            self.index
                .get(key)
                .and_then(|i| snapshot.counts.get(*i))
                .copied()
                .unwrap_or_default()
        };
        let (now, before) = (at(latest), at(base));
        (
            Counts {
                good: now.good.saturating_sub(before.good),
                total: now.total.saturating_sub(before.total),
            },
            latest.at - base.at,
        )
    }
}

/// The burn rate over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowBurn {
    pub window: Duration,
    pub counts: Counts,
    /// 0 without events: nothing burns.
    pub burn_rate: f64,
}

/// One burn-rate alert condition and whether it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertState {
    pub name: String,
    pub alert: crate::maths::BurnWindow,
    pub firing: bool,
}

/// An SLO's state over its window, as far as the history reaches.
#[derive(Debug, Clone, PartialEq)]
pub struct SloReport {
    pub slo: usize,
    pub evaluable: bool,
    pub counts: Counts,
    /// Seconds of the window the history covers.
    pub covered_seconds: i64,
    /// Good over total; `None` without events.
    pub sli: Option<f64>,
    pub budget_remaining: f64,
    pub burn_rates: Vec<WindowBurn>,
    pub alerts: Vec<AlertState>,
    /// At the last hour's burn rate, as the generated dashboards project.
    pub exhaustion: Exhaustion,
}

impl SliPlan {
    /// The windows burn rates are reported for: every long and short window
    /// of the SLO's alerts, shortest first.
    pub fn burn_windows(&self, slo: usize) -> Vec<Duration> {
        let mut windows: Vec<Duration> = self.slos[slo]
            .alerts
            .iter()
            .flat_map(|a| [a.window.long, a.window.short])
            .collect();
        windows.sort();
        windows.dedup();
        windows
    }

    /// The SLO at `slo` over the whole service or one tenant. A tenant
    /// without traffic has no ratio: its whole budget, burning nothing.
    pub fn report(&self, history: &History, slo: usize, tenant: Option<&str>) -> SloReport {
        let definition = &self.slos[slo];
        let key = Key {
            slo,
            tenant: tenant.map(str::to_owned),
        };
        let objective = definition.objective;
        let (counts, covered_seconds) = history.increase(&key, definition.window);
        let ratio_over = |window: Duration| {
            let (c, _) = history.increase(&key, window);
            error_ratio(c.good, c.total)
        };
        let burn_rates: Vec<WindowBurn> = self
            .burn_windows(slo)
            .into_iter()
            .map(|window| {
                let (c, _) = history.increase(&key, window);
                WindowBurn {
                    window,
                    counts: c,
                    burn_rate: error_ratio(c.good, c.total)
                        .map_or(0.0, |ratio| burn_rate(ratio, objective)),
                }
            })
            .collect();
        let windows: Vec<_> = definition.alerts.iter().map(|a| a.window).collect();
        let decision = decide_alerts(&windows, objective, ratio_over);
        let alerts = definition
            .alerts
            .iter()
            .map(|a| AlertState {
                name: a.name.clone(),
                alert: a.window,
                firing: decision.firing.contains(&a.window),
            })
            .collect();
        let remaining = budget_remaining(counts.good, counts.total, objective);
        let last_hour = ratio_over(Duration::hours(1)).map_or(0.0, |r| burn_rate(r, objective));
        SloReport {
            slo,
            evaluable: self.evaluable(slo),
            counts,
            covered_seconds,
            sli: (counts.total > 0)
                .then(|| counts.good.min(counts.total) as f64 / counts.total as f64),
            budget_remaining: remaining,
            burn_rates,
            alerts,
            exhaustion: project_exhaustion(remaining, last_hour, definition.window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::parse_spec_files;

    const SPEC: &str = r#"
apiVersion: openslo/v1
kind: Service
metadata:
  name: api
spec:
  description: the API
---
apiVersion: openslo/v1
kind: SLI
metadata:
  name: send-availability
spec:
  ratioMetric:
    counter: true
    bad:
      metricSource:
        type: Prometheus
        spec:
          query: 'rpc_server_call_duration_seconds_count{tp_component="gateway",rpc_method="thoughtpartner.v1.ConversationService/SendMessage",error_type!=""}'
    total:
      metricSource:
        type: Prometheus
        spec:
          query: 'rpc_server_call_duration_seconds_count{tp_component="gateway",rpc_method="thoughtpartner.v1.ConversationService/SendMessage"}'
---
apiVersion: openslo/v1
kind: SLO
metadata:
  name: send-availability
  annotations:
    thoughtpartner.io/breakdown-by: tp_tenant_id
spec:
  service: api
  indicatorRef: send-availability
  timeWindow:
    - duration: 28d
      isRolling: true
  budgetingMethod: Occurrences
  objectives:
    - target: 0.99
  alertPolicies:
    - alertPolicyRef: burn-rate
---
apiVersion: openslo/v1
kind: SLI
metadata:
  name: send-latency
spec:
  ratioMetric:
    counter: true
    good:
      metricSource:
        type: Prometheus
        spec:
          query: 'rpc_server_call_duration_seconds_bucket{tp_component="gateway",rpc_method="thoughtpartner.v1.ConversationService/SendMessage",le=~"1|1\\.0"}'
    total:
      metricSource:
        type: Prometheus
        spec:
          query: 'rpc_server_call_duration_seconds_count{tp_component="gateway",rpc_method="thoughtpartner.v1.ConversationService/SendMessage"}'
---
apiVersion: openslo/v1
kind: SLO
metadata:
  name: send-latency
spec:
  service: api
  indicatorRef: send-latency
  timeWindow:
    - duration: 28d
      isRolling: true
  budgetingMethod: Occurrences
  objectives:
    - target: 0.99
  alertPolicies:
    - alertPolicyRef: burn-rate
---
apiVersion: openslo/v1
kind: AlertPolicy
metadata:
  name: burn-rate
spec:
  alertWhenNoData: false
  alertWhenResolved: true
  alertWhenBreaching: true
  conditions:
    - kind: AlertCondition
      metadata:
        name: page-1h
      spec:
        severity: page
        condition:
          kind: burnrate
          op: gt
          threshold: 14.4
          lookbackWindow: 1h
          alertAfter: 0m
    - kind: AlertCondition
      metadata:
        name: ticket-3d
      spec:
        severity: ticket
        condition:
          kind: burnrate
          op: gt
          threshold: 1
          lookbackWindow: 3d
          alertAfter: 0m
"#;

    fn plan() -> SliPlan {
        let files = parse_spec_files(&[("api".to_owned(), SPEC.to_owned())]).unwrap();
        SliPlan::new(&Catalog::resolve(&files).unwrap())
    }

    /// An exposition with `ok` good and `errors` failed SendMessage calls
    /// of tenant t1, `slow` of them slower than 1 s.
    fn exposition(ok: u64, errors: u64, slow: u64) -> String {
        let m = r#"rpc_method="thoughtpartner.v1.ConversationService/SendMessage""#;
        format!(
            "# TYPE rpc_server_call_duration_seconds histogram\n\
             rpc_server_call_duration_seconds_bucket{{le=\"1.0\",{m},rpc_status_code=\"OK\",tp_component=\"gateway\",tp_tenant_id=\"t1\"}} {} # {{trace_id=\"abc\"}} 0.03\n\
             rpc_server_call_duration_seconds_count{{{m},rpc_status_code=\"OK\",tp_component=\"gateway\",tp_tenant_id=\"t1\"}} {ok}\n\
             rpc_server_call_duration_seconds_count{{{m},rpc_status_code=\"INTERNAL\",error_type=\"INTERNAL\",tp_component=\"gateway\",tp_tenant_id=\"t1\"}} {errors}\n\
             rpc_server_call_duration_seconds_bucket{{le=\"1.0\",{m},rpc_status_code=\"INTERNAL\",error_type=\"INTERNAL\",tp_component=\"gateway\",tp_tenant_id=\"t1\"}} {errors}\n\
             rpc_server_call_duration_seconds_count{{{m},rpc_status_code=\"OK\",tp_component=\"conversation\"}} 999\n\
             # EOF\n",
            ok - slow
        )
    }

    fn read(plan: &SliPlan, text: &str) -> Reading {
        plan.read(&parse_exposition(text, |name| plan.reads_metric(name)))
    }

    fn whole(slo: usize) -> Key {
        Key { slo, tenant: None }
    }

    #[test]
    fn only_selected_samples_are_kept_and_they_read_the_same() {
        let plan = plan();
        // Buckets at bounds no SLO reads, as a real histogram has.
        let mut text = exposition(90, 5, 7).replace("# EOF\n", "");
        for le in [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "2.5", "5.0", "10.0",
        ] {
            text.push_str(&format!(
                "rpc_server_call_duration_seconds_bucket{{le=\"{le}\",rpc_method=\"thoughtpartner.v1.ConversationService/ListMessages\",rpc_status_code=\"OK\",tp_component=\"gateway\",tp_tenant_id=\"t1\"}} 1\n"
            ));
        }
        text.push_str("rpc_server_call_duration_seconds_sum{rpc_method=\"x\"} 12.5\n# EOF\n");
        let all = parse_exposition(&text, |name| plan.reads_metric(name));
        let selected = plan.selected_samples(&text);
        assert!(
            selected.len() < all.len() - 9,
            "{} of {}",
            selected.len(),
            all.len()
        );
        assert!(selected.iter().all(|s| s.label("le") != "0.005"));
        assert_eq!(plan.read(&selected), plan.read(&all));
    }

    #[test]
    fn parses_exposition_lines_with_escapes_exemplars_and_comments() {
        let text = "# HELP x y\nx_total{a=\"q\\\"uote\",b=\"\"} 3 # {trace_id=\"1\"} 1.0\nx_total 4\nbad{a=1} 2\ny 5\n";
        let samples = parse_exposition(text, |name| name == "x_total" || name == "bad");
        assert_eq!(samples.len(), 2, "{samples:?}");
        assert_eq!(samples[0].label("a"), "q\"uote");
        assert_eq!(samples[0].label("missing"), "");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].value, 4.0);
    }

    #[test]
    fn reads_good_and_total_per_slo_and_tenant() {
        let plan = plan();
        let reading = read(&plan, &exposition(10, 2, 3));
        // Availability: bad are server errors; the conversation's own
        // series (another tp_component) are not the gateway's calls.
        assert_eq!(
            reading[&whole(0)],
            Counts {
                good: 10,
                total: 12
            }
        );
        let t1 = Key {
            slo: 0,
            tenant: Some("t1".into()),
        };
        assert_eq!(
            reading[&t1],
            Counts {
                good: 10,
                total: 12
            }
        );
        // Latency: the le="1.0" bucket (the regex alternative) over all calls.
        assert_eq!(reading[&whole(1)], Counts { good: 9, total: 12 });
        // No breakdown for the latency SLO in this spec.
        assert!(!reading.contains_key(&Key {
            slo: 1,
            tenant: Some("t1".into())
        }));
    }

    #[test]
    fn only_literal_alternations_are_evaluated_as_regexes() {
        assert_eq!(
            literal_alternatives(r"1|1\.0"),
            Some(vec!["1".to_owned(), "1.0".to_owned()])
        );
        assert_eq!(literal_alternatives("1.*"), None);
    }

    #[test]
    fn windows_difference_snapshots_and_start_at_the_history() {
        let plan = plan();
        let mut history = History::new(Duration::days(28), 1, 100);
        let t0 = 1_000_000;
        // The first reading is a baseline: 5 calls from before are not ours.
        history.record(t0, vec![Some(read(&plan, &exposition(5, 0, 0)))]);
        let report = plan.report(&history, 0, None);
        assert_eq!(report.counts, Counts::default());
        assert_eq!(report.budget_remaining, 1.0);
        assert_eq!(report.sli, None);
        assert!(report.burn_rates.iter().all(|b| b.burn_rate == 0.0));

        // 100 calls, 1 failed, over the next 50 minutes.
        history.record(t0 + 3_000, vec![Some(read(&plan, &exposition(104, 1, 0)))]);
        let report = plan.report(&history, 0, None);
        assert_eq!(
            report.counts,
            Counts {
                good: 99,
                total: 100
            }
        );
        assert_eq!(report.covered_seconds, 3_000);
        assert!((report.budget_remaining - 0.0).abs() < 1e-9, "1 % of 1 %");
        let five_minutes = &report.burn_rates[0];
        assert_eq!(five_minutes.window, Duration::minutes(5));
        // Longer than the history: what exists since start.
        assert_eq!(five_minutes.counts.total, 100);
        assert!((five_minutes.burn_rate - 1.0).abs() < 1e-9);
        assert!(report.alerts.iter().all(|a| !a.firing));

        // Two hours later, 10 of 20 more fail: the page condition holds
        // over the last hour and its 5 minutes.
        history.record(
            t0 + 3_000 + 7_000,
            vec![Some(read(&plan, &exposition(114, 11, 0)))],
        );
        let report = plan.report(&history, 0, None);
        let short = report
            .burn_rates
            .iter()
            .find(|b| b.window == Duration::minutes(5))
            .unwrap();
        assert_eq!(
            short.counts,
            Counts {
                good: 10,
                total: 20
            }
        );
        assert!((short.burn_rate - 50.0).abs() < 1e-9);
        let page = report.alerts.iter().find(|a| a.name == "page-1h").unwrap();
        assert!(page.firing);
        assert!(report.budget_remaining < 0.0);
        assert_eq!(report.exhaustion, Exhaustion::Exhausted);
        // The tenant's view is the same here; an unknown tenant has no
        // traffic: full budget, no burn, never NaN.
        let t1 = plan.report(&history, 0, Some("t1"));
        assert_eq!(t1.counts, report.counts);
        let nobody = plan.report(&history, 0, Some("nobody"));
        assert_eq!(nobody.budget_remaining, 1.0);
        assert!(nobody.burn_rates.iter().all(|b| b.burn_rate == 0.0));
        assert_eq!(nobody.exhaustion, Exhaustion::Never);
    }

    #[test]
    fn restarts_and_failed_scrapes_never_count_twice_or_go_negative() {
        let plan = plan();
        let mut history = History::new(Duration::days(28), 2, 100);
        let reading = |ok, errors| Some(read(&plan, &exposition(ok, errors, 0)));
        history.record(0, vec![reading(0, 0), None]);
        history.record(10, vec![reading(10, 0), None]);
        // The source fails once, then comes back where it was.
        history.record(20, vec![None, None]);
        history.record(30, vec![reading(12, 0), None]);
        // It restarts: counters from zero.
        history.record(40, vec![reading(3, 1), None]);
        let (counts, _) = history.increase(&whole(0), Duration::days(1));
        assert_eq!(
            counts,
            Counts {
                good: 15,
                total: 16
            }
        );
    }

    #[test]
    fn history_is_bounded_by_tiers_and_keys() {
        let plan = plan();
        let mut history = History::new(Duration::days(28), 1, 3);
        let mut ok = 0;
        // Thirty days at a sample a second is far more than is kept.
        for step in 0..(30 * 24 * 60) {
            ok += 1;
            history.record(step * 60, vec![Some(read(&plan, &exposition(ok, 0, 0)))]);
        }
        let kept: usize = history.tiers.iter().map(|(_, s)| s.len()).sum();
        assert!(kept <= history.max_snapshots(), "{kept}");
        assert!(history.max_snapshots() < 2_000);
        // Three keys fit: two whole-service SLOs and a tenant.
        assert_eq!((history.tracked_keys(), history.untracked()), (3, 0));
        // The 28-day window reaches back about 28 days, within the coarse tier's hour.
        let (counts, covered) = history.increase(&whole(0), Duration::days(28));
        assert!(
            (28 * 86_400..=28 * 86_400 + 3_600).contains(&covered),
            "{covered}"
        );
        assert_eq!(counts.total as i64, covered / 60);
        let (counts, covered) = history.increase(&whole(0), Duration::minutes(5));
        assert_eq!((counts.total, covered), (5, 300));

        // Beyond the key cap, increases are dropped and counted.
        let mut capped = History::new(Duration::days(28), 1, 1);
        capped.record(0, vec![Some(read(&plan, &exposition(0, 0, 0)))]);
        capped.record(10, vec![Some(read(&plan, &exposition(5, 0, 0)))]);
        assert_eq!(capped.tracked_keys(), 1);
        assert!(capped.untracked() > 0);
    }
}
