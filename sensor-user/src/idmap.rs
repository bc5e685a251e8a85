//! Hash maps keyed by numbers the kernel hands out: pids, process keys,
//! stream ids, cgroup ids, inodes.
//!
//! The daemon looks such keys up dozens of times per event: a record's
//! ancestry alone walks the process table once per generation. With the
//! standard SipHash, hashing was about a sixth of the daemon's instructions
//! under an agent's load (callgrind), and foldhash cut the instructions per
//! LLM request by 14%. foldhash is randomly seeded, and these keys are
//! chosen by the kernel, not by the processes they describe, so SipHash's
//! stronger resistance to chosen collisions is not needed here. Maps keyed
//! by text that a process or a telemetry peer chooses (session ids, file
//! paths) keep the standard hasher.

/// A hash map keyed by kernel ids.
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A hash set of kernel ids.
pub type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
