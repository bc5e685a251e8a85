//! Property tests of the tamper-evident log: real logs written by the
//! sinks, with rotations and crash-restarts, then changed one record at a
//! time. Every edit, deletion, insertion, swap and tail truncation must be
//! reported, and near where it happened; the untouched log must verify
//! clean.
//!
//! Logs come from a seeded generator, so a failure names its seed and
//! mutation and repeats exactly. `AGENT_SENSOR_TAMPER_SEEDS` sets how many
//! seeds run. Unoptimised builds hash and parse about 50 times slower, so
//! they run smaller logs, fewer mutations and one seed (`cargo xtask test`
//! builds with optimisations and runs the full size).

use std::path::Path;

use super::{
    chain::{self, SealedLine},
    checkpoint::PublicKey,
    verify::{verify_contents, Contents, End, Report, EXIT_BAD_SIGNATURE, EXIT_CLEAN, EXIT_TAMPERED, EXIT_WARNING},
};
use crate::sinks::tests::{evidence_files, open, settings, test_keys, test_stamper, write_record, Scratch};

/// SplitMix64: small, seedable and good enough to pick positions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low)
    }
}

/// Characters that stress escaping and the integrity splice.
const PIECES: &[&str] = &[
    "a", "b", "z", "0", "9", " ", "/", "-", "\"", "\\", "é", "😀", "\u{7}", "\t", ",\"integrity\":{", "}}", "\n",
];

fn payload(rng: &mut Rng) -> String {
    let len = rng.range(0, 60);
    (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect()
}

/// A generated log: file names in chain order and their bytes.
struct Log {
    _dir: Scratch,
    files: Vec<(String, Vec<u8>)>,
    key: PublicKey,
}

impl Log {
    fn contents(&self) -> Vec<Contents> {
        self.files.iter().map(|(name, data)| Contents { name: name.clone(), data: data.clone() }).collect()
    }
}

/// Writes about `records` records through the real sinks, with rotation,
/// a crash that tears the last line, and a crash at a line boundary.
fn generate(seed: u64, records: usize) -> Log {
    let mut rng = Rng(seed);
    let dir = Scratch::new(&format!("tamper-{seed}"));
    let path = dir.path().join("evidence.jsonl");
    let (private, key) = test_keys(dir.path());
    let mut config = settings(Some(&private));
    config.checkpoint_every_records = rng.range(20, 90) as u64;
    config.rotate_size_bytes = rng.range(40, 120) as u64 * 1024;
    let mut stamper = test_stamper();
    let crash_at = [records / 3, 2 * records / 3];
    let mut sinks = open(&path, &config, &stamper);
    for i in 0..records {
        write_record(&mut sinks, &mut stamper, &payload(&mut rng));
        if i == crash_at[0] {
            // A crash mid-write: the buffered records reach the file, the
            // last line only in part.
            sinks.flush().unwrap();
            sinks.crash();
            let torn = format!("{{\"schema\":\"agent-sensor/0.1\",\"id\":\"{}", payload(&mut rng));
            let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            std::io::Write::write_all(&mut file, torn.as_bytes()).unwrap();
            sinks = open(&path, &config, &stamper);
        } else if i == crash_at[1] {
            // A crash between two writes: no torn bytes, no shutdown checkpoint.
            sinks.flush().unwrap();
            sinks.crash();
            sinks = open(&path, &config, &stamper);
        }
    }
    sinks.close().unwrap();
    let files = evidence_files(&path)
        .iter()
        .map(|p: &std::path::PathBuf| (file_name(p), std::fs::read(p).unwrap()))
        .collect();
    Log { _dir: dir, files, key }
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Lines of every file in chain order; each keeps its newline.
fn split(files: &[(String, Vec<u8>)]) -> Vec<Vec<Vec<u8>>> {
    files.iter().map(|(_, data)| data.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect()).collect()
}

fn join(names: &[(String, Vec<u8>)], lines: &[Vec<Vec<u8>>]) -> Vec<Contents> {
    names.iter().zip(lines).map(|((name, _), lines)| Contents { name: name.clone(), data: lines.concat() }).collect()
}

/// Global line index of `(file name, 1-based line)` in `lines`.
fn global_index(log: &Log, lines: &[Vec<Vec<u8>>], file: &str, line: usize) -> usize {
    let position = log.files.iter().position(|(name, _)| name == file).expect("report names a known file");
    lines[..position].iter().map(Vec::len).sum::<usize>() + line - 1
}

fn locate(lines: &[Vec<Vec<u8>>], global: usize) -> (usize, usize) {
    let mut rest = global;
    for (file, file_lines) in lines.iter().enumerate() {
        if rest < file_lines.len() {
            return (file, rest);
        }
        rest -= file_lines.len();
    }
    panic!("line {global} is past the end");
}

fn intact(line: &[u8]) -> Option<SealedLine<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    SealedLine::parse(line).filter(SealedLine::is_self_consistent)
}

/// What a test expects of a mutated log.
struct Expect {
    what: String,
    /// Global line index the first problem must be reported within
    /// (inclusive range), when the mutation is in the log's interior.
    near: Option<(usize, usize)>,
}

fn check(log: &Log, mutated: &[Vec<Vec<u8>>], expect: &Expect) -> Report {
    let report = verify_contents(&join(&log.files, mutated), Some(&log.key));
    assert_ne!(report.exit_code, EXIT_CLEAN, "{} went unnoticed: {report:#?}", expect.what);
    if let Some((low, high)) = expect.near {
        assert_eq!(report.exit_code, EXIT_TAMPERED, "{}: {report:#?}", expect.what);
        let bad = report.first_bad.as_ref().expect("a tampered report names the first bad record");
        let line = bad.line.expect("the first bad record has a line");
        let at = global_index(log, mutated, &bad.file, line);
        assert!(
            (low..=high).contains(&at),
            "{}: reported at global line {at} ({}:{line}), expected {low}..={high}: {}",
            expect.what,
            bad.file,
            bad.message
        );
    }
    report
}

fn seeds() -> Vec<u64> {
    let default = if cfg!(debug_assertions) { 1 } else { 2 };
    let count = std::env::var("AGENT_SENSOR_TAMPER_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    (0..count).map(|i| 0x5eed_0000 + i).collect()
}

const RECORDS: usize = if cfg!(debug_assertions) { 1000 } else { 2500 };
/// Mutations tried per kind and seed, beside the boundary cases.
const TRIES: usize = if cfg!(debug_assertions) { 8 } else { 40 };
/// Line boundaries at the end of the log where truncation is tried.
const TAIL_CUTS: usize = if cfg!(debug_assertions) { 20 } else { 300 };

#[test]
fn untouched_log_verifies_clean() {
    for seed in seeds() {
        let log = generate(seed, RECORDS);
        assert!(log.files.len() >= 3, "seed {seed}: expected rotations, got {} files", log.files.len());
        let report = verify_contents(&log.contents(), Some(&log.key));
        assert_eq!(report.exit_code, EXIT_CLEAN, "seed {seed}: {report:#?}");
        assert_eq!(report.end, Some(End::Shutdown));
        let reasons: Vec<&str> = report.recoveries.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["torn_tail", "unclean_stop"], "seed {seed}");
        let verified = report.verified.unwrap();
        assert_eq!(verified.first_seq, 0);
        // Records, checkpoints and the two recovery records, minus nothing.
        assert!(verified.records as usize > RECORDS, "seed {seed}: {verified:?}");
        assert_eq!(report.covered_through_seq, Some(verified.last_seq));
        // Given in reverse, the files are sorted back into chain order.
        let mut reversed = log.contents();
        reversed.reverse();
        assert_eq!(verify_contents(&reversed, Some(&log.key)).exit_code, EXIT_CLEAN);
    }
}

#[test]
fn every_edit_detected() {
    for seed in seeds() {
        let log = generate(seed, RECORDS);
        let lines = split(&log.files);
        let total: usize = lines.iter().map(Vec::len).sum();
        let mut rng = Rng(seed ^ 0xed17);
        let mut targets: Vec<usize> = (0..TRIES).map(|_| rng.below(total)).collect();
        targets.extend([0, total - 1]);
        targets.extend(torn_lines(&lines).into_iter().flat_map(|g| [g, g + 1]));
        for g in targets {
            let mut mutated = lines.clone();
            let (file, index) = locate(&lines, g);
            let line = &mut mutated[file][index];
            let position = rng.below(line.len() - 1);
            let old = line[position];
            let mut new = [b'a', b'0', b'"', b'}', b' ', b'\n', 0x00, 0xff, b'F'][rng.below(9)];
            if new == old {
                new = old ^ 0x01;
            }
            line[position] = new;
            let what = format!("seed {seed}: byte {position} of global line {g} changed from {old:#x} to {new:#x}");
            // A changed byte is reported on its line, or on the torn line
            // before it when it is the recovery record.
            check(&log, &mutated, &Expect { what, near: Some((low_bound(&lines, g), g)) });
        }
    }
}

#[test]
fn every_rehashed_edit_detected() {
    // An attacker who changes a record and recomputes its own hash: the
    // record is intact on its own, and only the next record's `prev_hash`
    // shows it. A checkpoint's own signature shows it at once, which
    // matters for the last record, which no record links to.
    for seed in seeds() {
        let log = generate(seed, RECORDS);
        let lines = split(&log.files);
        let total: usize = lines.iter().map(Vec::len).sum();
        let torn = torn_lines(&lines);
        let mut rng = Rng(seed ^ 0x4e4a);
        let mut targets: Vec<usize> = (0..TRIES).map(|_| rng.below(total)).collect();
        targets.extend([0, total - 2, total - 1]);
        targets.extend(file_boundaries(&lines).into_iter().map(|g| g - 1));
        for g in targets.into_iter().filter(|g| !torn.contains(g)) {
            let (file, index) = locate(&lines, g);
            let sealed = intact(&lines[file][index]).expect("an intact line");
            let text = String::from_utf8(sealed.body.to_vec()).unwrap();
            let changed = text.replacen("\"time\":\"", "\"time\":\"1", 1);
            assert_ne!(changed, text, "every record has a time");
            let mut body = changed.into_bytes();
            body.push(b'}');
            chain::seal(&sealed.prev_hash, &mut body).unwrap();
            body.push(b'\n');
            let mut mutated = lines.clone();
            mutated[file][index] = body;
            let what = format!("seed {seed}: global line {g} changed and re-hashed");
            if sealed.meta().unwrap().kind == "evidence.checkpoint" {
                // A checkpoint's signature covers its own bytes.
                let report = check(&log, &mutated, &Expect { what: what.clone(), near: None });
                assert_eq!(report.exit_code, EXIT_BAD_SIGNATURE, "{what}: {report:#?}");
                let bad = report.first_bad.unwrap();
                assert_eq!(global_index(&log, &mutated, &bad.file, bad.line.unwrap()), g, "{what}");
                continue;
            }
            // Blamed on the next line, which no longer links to it.
            check(&log, &mutated, &Expect { what, near: Some((g + 1, g + 1)) });
        }
    }
}

#[test]
fn every_deletion_detected() {
    for seed in seeds() {
        let log = generate(seed, RECORDS);
        let lines = split(&log.files);
        let total: usize = lines.iter().map(Vec::len).sum();
        let mut rng = Rng(seed ^ 0xde1e7e);
        let mut targets: Vec<usize> = (0..TRIES).map(|_| rng.below(total)).collect();
        targets.extend([0, 1, total - 2, total - 1]);
        targets.extend(torn_lines(&lines).into_iter().flat_map(|g| [g, g + 1]));
        targets.extend(file_boundaries(&lines));
        for g in targets {
            let mut mutated = lines.clone();
            let (file, index) = locate(&lines, g);
            mutated[file].remove(index);
            let interior = g > 0 && g < total - 1;
            let what = format!("seed {seed}: global line {g} deleted");
            // The line after the gap now sits at `g`.
            check(&log, &mutated, &Expect { what, near: interior.then_some((low_bound(&lines, g), g)) });
        }
    }
}

#[test]
fn every_insertion_detected() {
    for seed in seeds() {
        let log = generate(seed, RECORDS);
        let lines = split(&log.files);
        let total: usize = lines.iter().map(Vec::len).sum();
        let mut rng = Rng(seed ^ 0x1a5e);
        let mut targets: Vec<usize> = (0..TRIES).map(|_| rng.range(1, total)).collect();
        targets.extend(torn_lines(&lines).into_iter().flat_map(|g| [g, g + 1]));
        targets.extend(file_boundaries(&lines));
        for g in targets {
            // A copy of another line.
            let source = rng.below(total);
            let (file, index) = locate(&lines, g);
            let (from_file, from_index) = locate(&lines, source);
            let mut mutated = lines.clone();
            mutated[file].insert(index, lines[from_file][from_index].clone());
            let what = format!("seed {seed}: copy of global line {source} inserted before global line {g}");
            // A copy that becomes a file's first line can change the order
            // the files sort in, and with it where the break shows first.
            let near = (index != 0).then_some((low_bound(&lines, g), g + 1));
            check(&log, &mutated, &Expect { what, near });

            // A forged record that links correctly to the one before it:
            // only the record after it can tell.
            let Some(previous) = (0..g).rev().find_map(|i| {
                let (f, x) = locate(&lines, i);
                intact(&lines[f][x]).map(|s| (s.hash, s.meta().unwrap().seq))
            }) else {
                continue;
            };
            let mut forged = format!(
                "{{\"schema\":\"agent-sensor/0.1\",\"id\":\"forged\",\"seq\":{},\"kind\":\"process.exec\"}}",
                previous.1 + 1
            )
            .into_bytes();
            chain::seal(&previous.0, &mut forged).unwrap();
            forged.push(b'\n');
            let mut mutated = lines.clone();
            mutated[file].insert(index, forged);
            let what = format!("seed {seed}: forged record inserted before global line {g}");
            check(&log, &mutated, &Expect { what, near: Some((low_bound(&lines, g), g + 1)) });
        }
        // Appended after the shutdown checkpoint: the tail is no longer
        // covered by a signed checkpoint.
        let mut mutated = lines.clone();
        let last = mutated.len() - 1;
        let copy = lines[0][0].clone();
        mutated[last].push(copy);
        let what = format!("seed {seed}: first line appended at the end");
        check(&log, &mutated, &Expect { what, near: Some((total, total)) });
    }
}

#[test]
fn every_swap_detected() {
    for seed in seeds() {
        let log = generate(seed, RECORDS);
        let lines = split(&log.files);
        let total: usize = lines.iter().map(Vec::len).sum();
        let mut rng = Rng(seed ^ 0x5a4b);
        let mut pairs: Vec<(usize, usize)> = (0..TRIES).map(|_| rng.below(total - 1)).map(|a| (a, a + 1)).collect();
        pairs.extend((0..TRIES).map(|_| {
            let a = rng.below(total - 1);
            (a, rng.range(a + 1, total))
        }));
        pairs.extend([(0, 1), (total - 2, total - 1)]);
        pairs.extend(file_boundaries(&lines).into_iter().map(|g| (g - 1, g)));
        for (a, b) in pairs {
            let (fa, ia) = locate(&lines, a);
            let (fb, ib) = locate(&lines, b);
            if lines[fa][ia] == lines[fb][ib] {
                continue;
            }
            let mut mutated = lines.clone();
            let line_a = mutated[fa][ia].clone();
            mutated[fa][ia] = std::mem::replace(&mut mutated[fb][ib], line_a);
            let what = format!("seed {seed}: global lines {a} and {b} swapped");
            // Moving a file's first line can change the order the files
            // sort in, and with it where the break shows first.
            let same_order = ia != 0 && ib != 0;
            check(&log, &mutated, &Expect { what, near: same_order.then_some((low_bound(&lines, a), a + 1)) });
        }
    }
}

#[test]
fn every_tail_truncation_detected() {
    for seed in seeds() {
        let log = generate(seed, RECORDS);
        let mut rng = Rng(seed ^ 0x7a11);
        let total_bytes: usize = log.files.iter().map(|(_, d)| d.len()).sum();
        // Every line boundary near the end, plus cuts inside lines.
        let boundaries: Vec<usize> = {
            let mut offsets = Vec::new();
            let mut at = 0;
            for (_, data) in &log.files {
                for line in data.split_inclusive(|&b| b == b'\n') {
                    at += line.len();
                    offsets.push(at);
                }
            }
            offsets
        };
        let mut cuts: Vec<usize> = boundaries.iter().rev().skip(1).take(TAIL_CUTS).copied().collect();
        cuts.extend((0..TRIES).map(|_| rng.range(1, total_bytes)));
        for cut in cuts {
            let mut remaining = cut;
            let files: Vec<Contents> = log
                .files
                .iter()
                .map(|(name, data)| {
                    let keep = remaining.min(data.len());
                    remaining -= keep;
                    Contents { name: name.clone(), data: data[..keep].to_vec() }
                })
                .collect();
            // An emptied file is still given, as the active file would be.
            let report = verify_contents(&files, Some(&log.key));
            let what = format!("seed {seed}: log cut at byte {cut} of {total_bytes}");
            assert!(
                report.exit_code == EXIT_WARNING || report.exit_code == EXIT_TAMPERED,
                "{what}: {report:#?}"
            );
            assert_ne!(report.end, Some(End::Shutdown), "{what}");
        }
    }
}

#[test]
fn removed_newest_files_show_in_range() {
    let seed = seeds()[0];
    let log = generate(seed, RECORDS);
    let full = verify_contents(&log.contents(), Some(&log.key)).verified.unwrap();
    let mut fewer = log.contents();
    fewer.pop();
    let report = verify_contents(&fewer, Some(&log.key));
    // Whole files removed from the end look like a set of rotated files:
    // clean, but the range and the end show where the chain stops.
    assert_eq!(report.end, Some(End::Rotation));
    assert!(report.verified.unwrap().last_seq < full.last_seq);
}

#[test]
fn wrong_key_and_bad_signature_detected() {
    let seed = seeds()[0];
    let log = generate(seed, 300);
    let other_dir = Scratch::new("other-key");
    let other = other_dir.path().join("other.pub");
    std::fs::write(&other, ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes()).unwrap();
    let other = PublicKey::load(&other).unwrap();
    let report = verify_contents(&log.contents(), Some(&other));
    assert_eq!(report.exit_code, EXIT_BAD_SIGNATURE, "{report:#?}");

    // Rewrite one checkpoint's signature and re-hash the chain from there,
    // as an attacker without the key would: only the signature fails.
    let mut lines = split(&log.files);
    let target = lines.iter().flatten().position(|l| {
        intact(l).is_some_and(|s| s.meta().unwrap().kind == "evidence.checkpoint")
    });
    let target = target.expect("a checkpoint");
    let mut prev = None;
    let mut global = 0;
    for file in &mut lines {
        for line in file.iter_mut() {
            let Some(sealed) = intact(line) else {
                global += 1;
                continue;
            };
            let mut body = sealed.body.to_vec();
            if global == target {
                let text = String::from_utf8(body).unwrap();
                let start = text.find("\"signature\":\"").unwrap() + 13;
                let flipped = if &text[start..start + 1] == "a" { "b" } else { "a" };
                body = format!("{}{flipped}{}", &text[..start], &text[start + 1..]).into_bytes();
            }
            let link = if global >= target { prev.unwrap_or(sealed.prev_hash) } else { sealed.prev_hash };
            body.push(b'}');
            let hash = chain::seal(&link, &mut body).unwrap();
            body.push(b'\n');
            *line = body;
            prev = Some(hash);
            global += 1;
        }
    }
    let mutated: Vec<Contents> = join(&log.files, &lines);
    let report = verify_contents(&mutated, Some(&log.key));
    assert_eq!(report.exit_code, EXIT_BAD_SIGNATURE, "{report:#?}");
    let bad = report.first_bad.unwrap();
    assert_eq!(global_index(&log, &lines, &bad.file, bad.line.unwrap()), target);
}

/// Returns the first line the verifier may blame for a change at global
/// line `g`: the start of a torn region that `g` is in or follows, else
/// `g - 1`.
fn low_bound(lines: &[Vec<Vec<u8>>], g: usize) -> usize {
    let torn = torn_lines(lines);
    let mut low = g;
    while low > 0 && torn.contains(&(low - 1)) {
        low -= 1;
    }
    if low == g { g.saturating_sub(1) } else { low }
}

/// Global indexes of the lines that are not intact records: the torn line.
fn torn_lines(lines: &[Vec<Vec<u8>>]) -> Vec<usize> {
    lines.iter().flatten().enumerate().filter(|(_, l)| intact(l).is_none()).map(|(i, _)| i).collect()
}

/// Global indexes of the first line of every file but the first.
fn file_boundaries(lines: &[Vec<Vec<u8>>]) -> Vec<usize> {
    let mut at = 0;
    let mut out = Vec::new();
    for file in &lines[..lines.len() - 1] {
        at += file.len();
        out.push(at);
    }
    out
}


