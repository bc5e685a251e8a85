//! Process sections kept serialised while their process and its ancestry
//! stay the same.
//!
//! Under an agent's load most records are about a few processes: the agent
//! is the subject of its connect and its LLM request, a tool of its spawn
//! and its exit. Serialising the same section again for each took about a
//! tenth of the daemon's time. The section's `start_time` depends on the
//! stamper's clock too, which is sampled once for the daemon's run.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::ProcessView;
use crate::idmap::IdMap;
use crate::process::{ProcKey, Process, ProcessTable};

/// Sections kept at most. A full cache is emptied: the bound matters only on
/// a host where many processes are the subject of records at once.
const MAX_ENTRIES: usize = 2048;

#[derive(Default)]
pub struct ViewCache {
    entries: IdMap<ProcKey, Entry>,
}

struct Entry {
    /// The exec the section describes. The process table gives each exec
    /// and fork a new id, and changes no other field of a process in place
    /// that the section shows, so the same pointer means the same process.
    exec_id: Arc<str>,
    /// The ancestors' exec ids, which the section lists.
    ancestry: Vec<Arc<str>>,
    /// The parent's exec id: its `exe` and `argv` are in the section too,
    /// and `ancestry` may be configured to be empty.
    parent: Option<Arc<str>>,
    json: Arc<RawValue>,
}

impl Entry {
    fn describes(&self, process: &Process, view: &ProcessView<'_>) -> bool {
        Arc::ptr_eq(&self.exec_id, &process.exec_id)
            && self.parent.as_ref().map(|id| id.as_ptr()) == view.parent.as_ref().map(|p| p.exec_id.as_ptr())
            && self.ancestry.len() == view.ancestry.len()
            && self.ancestry.iter().zip(&view.ancestry).all(|(kept, now)| Arc::ptr_eq(kept, now))
    }
}

impl ViewCache {
    /// Gives `view` its serialised form, from the cache when the process
    /// and its ancestry are unchanged. A view of a thread other than the
    /// leader differs per thread and is left to be serialised in the record.
    pub fn attach(&mut self, table: &ProcessTable, process: &Process, view: &mut ProcessView<'_>) {
        if view.thread.is_some() {
            return;
        }
        if let Some(entry) = self.entries.get(&process.key)
            && entry.describes(process, view)
        {
            view.json = Some(entry.json.clone());
            return;
        }
        // A view that cannot be serialised fails again, with its error, in
        // the sink that writes the record.
        let Ok(json) = serde_json::value::to_raw_value(&*view) else { return };
        let json: Arc<RawValue> = Arc::from(json);
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        let parent = process.parent.and_then(|key| table.get(&key)).map(|parent| parent.exec_id.clone());
        let entry = Entry { exec_id: process.exec_id.clone(), ancestry: view.ancestry.clone(), parent, json: json.clone() };
        self.entries.insert(process.key, entry);
        view.json = Some(json);
    }

    /// Drops the section of a process that exited or left the table.
    pub fn forget(&mut self, key: &ProcKey) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::ViewCache;
    use crate::{
        config::ProcessConfig,
        evidence::{Clock, ProcessView},
        process::{procfs::ProcEntry, ProcKey, ProcessTable},
        redact::Redactor,
    };

    // One clock, as the daemon's stamper keeps one for its whole run.
    static CLOCK: std::sync::LazyLock<Clock> = std::sync::LazyLock::new(Clock::from_system);

    fn entry(pid: u32, ppid: u32, argv: &[&str]) -> ProcEntry {
        ProcEntry { pid, ppid, start_ticks: 5, argv: argv.iter().map(|a| a.to_string()).collect(), comm: "x".into(), ..Default::default() }
    }

    /// Builds the child's view through the cache and checks it against the
    /// view serialised anew.
    fn attached(table: &ProcessTable, cache: &mut ViewCache, key: ProcKey, tid: Option<u32>) -> Option<Arc<serde_json::value::RawValue>> {
        let process = table.get(&key).unwrap();
        let mut view = ProcessView::new(table, process, tid, &CLOCK, key.start_ns);
        cache.attach(table, process, &mut view);
        let fresh = serde_json::to_string(&ProcessView::new(table, process, tid, &CLOCK, key.start_ns)).unwrap();
        if let Some(json) = &view.json {
            assert_eq!(json.get(), fresh);
        }
        view.json
    }

    #[test]
    fn reused_until_parent_changes() {
        let config = ProcessConfig { procfs_path: "/nonexistent-procfs".into(), ..Default::default() };
        let mut table = ProcessTable::new(config, "boot".to_owned(), Redactor::new(&[7; 32]));
        let keys = table.seed(vec![entry(10, 1, &["python3", "agent.py"]), entry(11, 10, &["ls", "-la"])]);
        let mut cache = ViewCache::default();

        let first = attached(&table, &mut cache, keys[1], None).expect("a serialised view");
        let second = attached(&table, &mut cache, keys[1], None).expect("a serialised view");
        assert!(Arc::ptr_eq(&first, &second), "the second view was serialised again");

        // The parent is replaced, as an exec replaces it: the child's
        // section shows the parent's new command line.
        table.seed(vec![entry(10, 1, &["python3", "other.py"])]);
        let third = attached(&table, &mut cache, keys[1], None).expect("a serialised view");
        assert!(!Arc::ptr_eq(&first, &third), "a stale view was reused");
        assert!(third.get().contains("other.py"), "{}", third.get());

        // A thread's view names the thread and is not kept.
        assert!(attached(&table, &mut cache, keys[1], Some(12)).is_none());

        cache.forget(&keys[1]);
        let fourth = attached(&table, &mut cache, keys[1], None).expect("a serialised view");
        assert!(!Arc::ptr_eq(&third, &fourth), "a forgotten view was reused");
    }
}
