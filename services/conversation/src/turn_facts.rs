//! What each earlier user turn says about the user's situation, read once
//! and kept by message id, on each worker thread for itself.
//!
//! Why: every reply's profile is its conversation's last 40 user turns read
//! in order, and reading all of them again for every reply was a fifth of
//! this service's instructions per SendMessage (callgrind, session 30:
//! ~150k of ~760k, the words and pattern passes over each turn). A turn's
//! text never changes (an edit is a new turn with a new id), so its facts
//! never go stale.
//!
//! Why per thread: a cache both worker threads read and write moves its
//! cache lines between the cores on every look-up. Shared (`moka`), it
//! saved 227k instructions per SendMessage by callgrind's count yet cost
//! 36–47 µs more CPU per call than reading the turns again (two `--phases
//! builds` runs). Per thread, a conversation's turns are read at most once
//! by each worker.
//!
//! Tenant isolation: facts are looked up only by the ids of turns the
//! caller's own query returned under row-level security, so a tenant is
//! never given another tenant's facts. The facts hold the user's own
//! sentences (what they tried, a constraint, the problem): a thread drops
//! those not used for [`IDLE`] the next time it replies, and they never
//! reach a log or a span.

use std::cell::RefCell;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use tp_coach::{ContextProfile, TurnFacts};
use uuid::Uuid;

/// Turns kept by each thread: ~40 for each conversation in use.
const CAPACITY: usize = 8_192;
/// How long a turn's facts outlive their last use.
pub const IDLE: Duration = Duration::from_secs(600);
/// How often a thread looks for facts idle for [`IDLE`].
const SWEEP_EVERY: Duration = Duration::from_secs(60);

static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

/// One thread's facts, with the second (since [`STARTED`]) each was last used.
#[derive(Default)]
struct Kept {
    facts: HashMap<Uuid, (TurnFacts, u64), foldhash::fast::RandomState>,
    swept_at: u64,
}

impl Kept {
    fn sweep(&mut self, now: u64) {
        if now.saturating_sub(self.swept_at) < SWEEP_EVERY.as_secs() {
            return;
        }
        self.swept_at = now;
        self.facts
            .retain(|_, (_, used)| now.saturating_sub(*used) < IDLE.as_secs());
    }

    /// Room for `more` turns: when full, the turns used in the last
    /// minute stay (a conversation in use), or none if they fill it.
    fn make_room(&mut self, now: u64, more: usize) {
        if self.facts.len() + more <= CAPACITY {
            return;
        }
        self.facts
            .retain(|_, (_, used)| now.saturating_sub(*used) < SWEEP_EVERY.as_secs());
        if self.facts.len() + more > CAPACITY * 3 / 4 {
            self.facts.clear();
        }
    }
}

/// Reads `turns` (id and text, oldest first) into `profile`, as
/// [`ContextProfile::absorb_all`] over their texts would, reading only
/// the turns this thread has not read before.
pub fn absorb<'a>(
    profile: &mut ContextProfile,
    turns: impl Iterator<Item = (Uuid, &'a str)> + Clone,
) {
    let now = STARTED.elapsed().as_secs();
    KEPT.with_borrow_mut(|kept| {
        kept.sweep(now);
        kept.make_room(now, turns.clone().count());
        for (id, text) in turns.clone() {
            kept.facts
                .entry(id)
                .and_modify(|(_, used)| *used = now)
                .or_insert_with(|| (TurnFacts::read(text), now));
        }
        let facts = &kept.facts;
        profile.absorb_facts(turns.filter_map(|(id, _)| facts.get(&id).map(|(facts, _)| facts)));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const TURNS: [&str; 3] = [
        "I'm a CTO of 40 engineers at a series B company.",
        "We tried weekly releases. The problem is that on-call burns people out.",
        "Budget is frozen until Q3.",
    ];

    #[test]
    fn kept_facts_make_the_profile_the_turns_make() {
        let ids: Vec<Uuid> = TURNS.iter().map(|_| Uuid::new_v4()).collect();
        let expected = ContextProfile::from_turns(TURNS);
        let mut first = ContextProfile::default();
        absorb(&mut first, ids.iter().copied().zip(TURNS));
        assert_eq!(first, expected);
        // Read again from what was kept: the texts are not looked at.
        let mut again = ContextProfile::default();
        absorb(&mut again, ids.iter().copied().zip(["", "", ""]));
        assert_eq!(again, expected);
        // Another id is read for itself.
        let mut other = ContextProfile::default();
        absorb(&mut other, std::iter::once((Uuid::new_v4(), "")));
        assert_eq!(other, ContextProfile::default());
    }

    #[test]
    fn a_full_thread_keeps_the_turns_in_use_and_drops_idle_ones() {
        let mut kept = Kept::default();
        for i in 0..CAPACITY {
            kept.facts.insert(
                Uuid::new_v4(),
                (TurnFacts::default(), if i % 2 == 0 { 0 } else { 1_000 }),
            );
        }
        kept.make_room(1_030, 1);
        assert_eq!(
            kept.facts.len(),
            CAPACITY / 2,
            "the turns idle for over a minute go"
        );
        kept.sweep(1_000 + IDLE.as_secs() - 1);
        assert_eq!(kept.facts.len(), CAPACITY / 2, "not idle long enough");
        // A thread looks once a minute at most.
        kept.sweep(1_000 + IDLE.as_secs());
        assert_eq!(kept.facts.len(), CAPACITY / 2, "looked a second ago");
        kept.sweep(1_000 + IDLE.as_secs() - 1 + SWEEP_EVERY.as_secs());
        assert!(kept.facts.is_empty(), "idle for IDLE: dropped");
        // All in use and full: room is made by starting again.
        for _ in 0..CAPACITY {
            kept.facts
                .insert(Uuid::new_v4(), (TurnFacts::default(), 5_000));
        }
        kept.make_room(5_000, 1);
        assert!(kept.facts.is_empty());
    }
}
