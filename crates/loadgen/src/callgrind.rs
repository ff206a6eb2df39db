//! Instructions instead of time: the services run under valgrind's
//! callgrind (`tp-loadgen run --callgrind DIR`), and
//! `tp-loadgen callgrind-report DIR` compares the stack with telemetry on
//! against the one with it off, per SendMessage, function by function.
//!
//! Why: on a shared 2-core VM the telemetry comparison's throughput and CPU
//! readings move by several per cent between runs of one build, which is
//! as large as the cost being measured. Instruction counts hardly move:
//! two runs of one build, with about as many calls, agreed within 500
//! instructions a call (of 1.2 million).
//! They are not time (a cache miss is one instruction), so they show where
//! the work is and whether a change removed some, not what it costs.
//!
//! Each service process writes `NN-<service>-telemetry-<on|off>.<pid>.callgrind`,
//! `NN` numbering the stacks in the order the run started them. The
//! report takes the last-started stack of each side, and divides by the
//! calls `conversation` served (counted by callgrind at
//! `RequestContext::read_from`, kept out of line for it, once per
//! internal call; the generated server's `call` is inlined by the
//! release profile's LTO), so a call's
//! share of start-up, seeding and periodic work (the SLO sampler, metric
//! exports) is in the figures too: more calls in the run, less of it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};

pub const SERVICES: [&str; 3] = ["knowledge", "conversation", "gateway"];

/// Called once per internal request a service serves (health checks and
/// reflection aside), and never inlined: see the module's comment.
const PER_REQUEST: &str = "tp_context::RequestContext::read_from";

/// Numbers the stacks this process starts, for the profiles' names.
static STACKS_STARTED: AtomicUsize = AtomicUsize::new(0);

pub fn next_stack_number() -> usize {
    STACKS_STARTED.fetch_add(1, Ordering::Relaxed)
}

/// The profile a service writes (valgrind expands `%p` to the pid).
pub fn profile_path(dir: &Path, stack: usize, service: &str, telemetry: bool) -> PathBuf {
    let side = if telemetry { "on" } else { "off" };
    dir.join(format!(
        "{stack:02}-{service}-telemetry-{side}.%p.callgrind"
    ))
}

/// `(stack, service, telemetry)` of a profile's file name.
fn parse_profile_name(name: &str) -> Option<(usize, &str, bool)> {
    let rest = name.strip_suffix(".callgrind")?;
    let (rest, pid) = rest.rsplit_once('.')?;
    pid.parse::<u32>().ok()?;
    let (stack, rest) = rest.split_once('-')?;
    let stack = stack.parse().ok()?;
    let (service, side) = rest.split_once("-telemetry-")?;
    let telemetry = match side {
        "on" => true,
        "off" => false,
        _ => return None,
    };
    Some((stack, service, telemetry))
}

/// One process's profile: instructions executed in each function itself
/// (not in what it called), and how often each function was called.
#[derive(Debug, Default)]
pub struct Profile {
    pub self_instructions: HashMap<String, u64>,
    pub calls: HashMap<String, u64>,
}

impl Profile {
    pub fn total(&self) -> u64 {
        self.self_instructions.values().sum()
    }

    /// Parses callgrind's output format (name compression, `calls=` lines
    /// followed by the call's inclusive cost, which is not the caller's own).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut profile = Profile::default();
        let mut names: HashMap<String, String> = HashMap::new();
        let mut ir_column = None;
        let mut function = String::new();
        let mut callee = String::new();
        let mut next_line_is_a_call = false;
        for line in text.lines() {
            if let Some(events) = line.strip_prefix("events:") {
                ir_column = events.split_whitespace().position(|e| e == "Ir");
            } else if let Some(name) = line.strip_prefix("fn=") {
                function = resolve(name, &mut names);
            } else if let Some(name) = line.strip_prefix("cfn=") {
                callee = resolve(name, &mut names);
            } else if let Some(count) = line.strip_prefix("calls=") {
                let count: u64 = count
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .with_context(|| format!("a calls= line without a count: {line}"))?;
                *profile.calls.entry(callee.clone()).or_default() += count;
                next_line_is_a_call = true;
            } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
                if std::mem::take(&mut next_line_is_a_call) {
                    continue;
                }
                let column = ir_column.context("cost lines before the events: line")?;
                // The position comes first; trailing zero costs may be left out.
                let ir: u64 = line
                    .split_whitespace()
                    .nth(1 + column)
                    .map(str::parse)
                    .transpose()
                    .with_context(|| format!("a cost line that is not numbers: {line}"))?
                    .unwrap_or(0);
                *profile
                    .self_instructions
                    .entry(function.clone())
                    .or_default() += ir;
            }
        }
        if ir_column.is_none() {
            bail!("not a callgrind profile: no events: line with Ir");
        }
        Ok(profile)
    }

    /// Requests `conversation` served, if this is its profile.
    fn conversation_calls(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(name, _)| *name == PER_REQUEST)
            .map(|(_, count)| count)
            .sum()
    }
}

/// `(id) name` defines a compressed name, `(id)` refers to one.
fn resolve(field: &str, names: &mut HashMap<String, String>) -> String {
    let field = field.trim();
    if let Some(rest) = field.strip_prefix('(')
        && let Some((id, name)) = rest.split_once(')')
    {
        let name = name.trim();
        if name.is_empty() {
            return names.get(id).cloned().unwrap_or_else(|| field.to_owned());
        }
        names.insert(id.to_owned(), name.to_owned());
        return name.to_owned();
    }
    field.to_owned()
}

/// The last-started stack's profile of each service on one side.
fn load_side(dir: &Path, telemetry: bool) -> anyhow::Result<Vec<Profile>> {
    let mut found: HashMap<&str, (usize, PathBuf)> = HashMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((stack, service, side)) = parse_profile_name(name) else {
            continue;
        };
        let Some(service) = SERVICES.iter().find(|s| **s == service) else {
            continue;
        };
        if side == telemetry && found.get(service).is_none_or(|(s, _)| stack > *s) {
            found.insert(service, (stack, path.clone()));
        }
    }
    SERVICES
        .iter()
        .map(|service| {
            let (_, path) = found.get(service).with_context(|| {
                format!(
                    "no {service} profile with telemetry {} in {}: run `tp-loadgen run --phases telemetry --callgrind {}` first",
                    if telemetry { "on" } else { "off" },
                    dir.display(),
                    dir.display()
                )
            })?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Profile::parse(&text).with_context(|| format!("parsing {}", path.display()))
        })
        .collect()
}

/// Per call, telemetry on against off: each service, all three, and the
/// functions that gained the most instructions.
pub fn report(on: &[Profile], off: &[Profile], top: usize) -> anyhow::Result<String> {
    let conversation = SERVICES
        .iter()
        .position(|s| *s == "conversation")
        .context("conversation is one of the services")?;
    let (calls_on, calls_off) = (
        on[conversation].conversation_calls(),
        off[conversation].conversation_calls(),
    );
    if calls_on == 0 || calls_off == 0 {
        bail!(
            "no calls counted at {PER_REQUEST} in conversation (on {calls_on}, off {calls_off}): \
             were the services built with their symbols?"
        );
    }
    let per_call = |instructions: u64, calls: u64| instructions as f64 / calls as f64;
    let mut out = String::new();
    writeln!(
        out,
        "requests conversation served: {calls_on} with telemetry on, {calls_off} off \
         (start-up, seeding and periodic work are spread over them)"
    )?;
    writeln!(
        out,
        "{:<14}{:>14}{:>14}{:>12}{:>9}",
        "instructions", "off per call", "on per call", "added", "share"
    )?;
    let (mut all_on, mut all_off) = (0.0, 0.0);
    for (i, service) in SERVICES.iter().enumerate() {
        let (a, b) = (
            per_call(on[i].total(), calls_on),
            per_call(off[i].total(), calls_off),
        );
        all_on += a;
        all_off += b;
        writeln!(
            out,
            "{service:<14}{b:>14.0}{a:>14.0}{:>+12.0}{:>+8.1}%",
            a - b,
            (a / b - 1.0) * 100.0
        )?;
    }
    writeln!(
        out,
        "{:<14}{all_off:>14.0}{all_on:>14.0}{:>+12.0}{:>+8.1}%",
        "all three",
        all_on - all_off,
        (all_on / all_off - 1.0) * 100.0
    )?;
    let mut added: HashMap<&str, [f64; 3]> = HashMap::new();
    for (i, (a, b)) in on.iter().zip(off).enumerate() {
        for (name, ir) in &a.self_instructions {
            added.entry(name).or_default()[i] += per_call(*ir, calls_on);
        }
        for (name, ir) in &b.self_instructions {
            added.entry(name).or_default()[i] -= per_call(*ir, calls_off);
        }
    }
    let mut rows: Vec<(&str, [f64; 3])> = added.into_iter().collect();
    rows.sort_by(|a, b| {
        let sum = |r: &[f64; 3]| r.iter().sum::<f64>();
        sum(&b.1).total_cmp(&sum(&a.1)).then(a.0.cmp(b.0))
    });
    writeln!(
        out,
        "functions that gained the most instructions per call (knowledge, conversation, gateway):"
    )?;
    for (name, by_service) in rows.iter().take(top) {
        let name: String = name.chars().take(110).collect();
        writeln!(
            out,
            "{:>+9.0}  {:>+7.0} {:>+7.0} {:>+7.0}  {name}",
            by_service.iter().sum::<f64>(),
            by_service[0],
            by_service[1],
            by_service[2]
        )?;
    }
    Ok(out)
}

/// `tp-loadgen callgrind-report DIR`.
pub fn report_dir(dir: &Path, top: usize) -> anyhow::Result<String> {
    let on = load_side(dir, true)?;
    let off = load_side(dir, false)?;
    report(&on, &off, top)
}

/// Fails with a clear message unless valgrind can be run.
pub fn check_valgrind() -> anyhow::Result<()> {
    let status = std::process::Command::new("valgrind")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!("--callgrind needs valgrind (Debian: apt-get install valgrind)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A profile in callgrind's format: `serve` runs the per-request marker
    /// `calls` times, and `record` costs `record_ir` of its own.
    fn profile(calls: u64, serve_ir: u64, record_ir: u64) -> String {
        format!(
            "version: 1\ncreator: callgrind-3.19.0\npositions: line\nevents: Ir Dr\n\
             fl=(1) ???\nfn=(1) serve\n0 {serve_ir} 5\ncfn=(2) {PER_REQUEST}\ncalls={calls} 0\n0 999999 7\n\
             cfn=(3) record\ncalls={calls} 0\n0 999999\n\
             fn=(2)\n0 {calls}\n\
             fn=(3)\n+1 {record_ir}\n*\n-1 0 3\n\
             totals: 1\n"
        )
    }

    #[test]
    fn a_profile_counts_own_instructions_and_calls_not_inclusive_costs() {
        let parsed = Profile::parse(&profile(40, 1_000, 200)).unwrap();
        assert_eq!(parsed.self_instructions["serve"], 1_000);
        assert_eq!(parsed.self_instructions[PER_REQUEST], 40);
        assert_eq!(parsed.self_instructions["record"], 200);
        assert_eq!(parsed.calls["record"], 40);
        assert_eq!(parsed.conversation_calls(), 40);
        assert_eq!(parsed.total(), 1_240);
    }

    #[test]
    fn the_report_divides_by_each_sides_calls() {
        let parse = |calls, serve, record| Profile::parse(&profile(calls, serve, record)).unwrap();
        // Telemetry on served 10 calls and spent 300 more in `record`;
        // off served 20 with the same work per call.
        let on = vec![
            parse(10, 1_000, 300),
            parse(10, 1_000, 300),
            parse(10, 1_000, 300),
        ];
        let off = vec![
            parse(20, 2_000, 0),
            parse(20, 2_000, 0),
            parse(20, 2_000, 0),
        ];
        let text = report(&on, &off, 1).unwrap();
        // Per call: on (1000 + 10 + 300) / 10 = 131, off (2000 + 20) / 20 = 101.
        let conversation = text
            .lines()
            .find(|l| l.starts_with("conversation"))
            .unwrap();
        let numbers: Vec<&str> = conversation.split_whitespace().collect();
        assert_eq!(numbers[1..4], ["101", "131", "+30"], "{text}");
        let all = text.lines().find(|l| l.starts_with("all three")).unwrap();
        assert!(all.contains("+90"), "{text}");
        let top = text.lines().last().unwrap();
        assert!(
            top.ends_with("record") && top.trim_start().starts_with("+90"),
            "{text}"
        );
    }

    #[test]
    fn profile_names_round_trip_and_others_are_ignored() {
        let dir = Path::new("/tmp/x");
        let path = profile_path(dir, 3, "gateway", true);
        let name = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace("%p", "4242");
        assert_eq!(parse_profile_name(&name), Some((3, "gateway", true)));
        assert_eq!(
            parse_profile_name("12-knowledge-telemetry-off.77.callgrind"),
            Some((12, "knowledge", false))
        );
        assert_eq!(parse_profile_name("callgrind.out.77"), None);
        assert_eq!(
            parse_profile_name("03-gateway-telemetry-maybe.1.callgrind"),
            None
        );
    }

    #[test]
    fn a_file_without_events_is_refused() {
        assert!(Profile::parse("fn=(1) main\n0 5\n").is_err());
    }
}
