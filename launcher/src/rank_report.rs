//! The lines each rank's wrapper writes to stderr for the launcher: mpirun
//! carries them to `elfin launch`, which keeps them off the console and
//! learns from them when every rank can take a stop request and how each ended.

use crate::stop::signal_name;

const READY_MARKER: &str = "@elfin-rank-ready";
const EXIT_MARKER: &str = "@elfin-rank-exit";
const STOPPING_MARKER: &str = "@elfin-rank-stopping";
const MARKERS: [&str; 3] = [READY_MARKER, STOPPING_MARKER, EXIT_MARKER];

/// A rank's trainer handles stop requests from now on (`ready`), or its
/// wrapper got a stop signal (`stopping`: it was alive then, whatever
/// happened to it next).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankReady {
    pub rank: u32,
    pub host: String,
}

/// How a rank's trainer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankExit {
    pub rank: u32,
    pub host: String,
    /// Shell-style: the exit code, or 128 + the signal that killed it.
    pub code: i32,
    /// The signal that killed it, 0 if it exited.
    pub signal: i32,
    pub at_ns: u128,
    pub log: String,
}

/// One line from a wrapper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Ready(RankReady),
    Stopping(RankReady),
    Exit(RankExit),
}

impl RankReady {
    pub fn line(&self) -> String {
        format!("{READY_MARKER} rank={} host={}", self.rank, self.host)
    }

    pub fn stopping_line(&self) -> String {
        format!("{STOPPING_MARKER} rank={} host={}", self.rank, self.host)
    }
}

impl RankExit {
    pub fn line(&self) -> String {
        format!(
            "{EXIT_MARKER} rank={} host={} code={} signal={} at={} log={}",
            self.rank, self.host, self.code, self.signal, self.at_ns, self.log
        )
    }

    /// "rank 1 on node2 was killed by SIGKILL" / "... exited with code 3".
    pub fn describe(&self) -> String {
        let how = match self.signal {
            0 => format!("exited with code {}", self.code),
            s => format!("was killed by {}", signal_name(s)),
        };
        format!("rank {} on {} {how}", self.rank, self.host)
    }
}

/// `key=value` fields up to ` log=` (the log path may hold spaces and comes last).
fn fields(rest: &str) -> (Vec<(&str, &str)>, Option<&str>) {
    let (head, log) = match rest.split_once(" log=") {
        Some((head, log)) => (head, Some(log)),
        None => (rest, None),
    };
    (head.split_whitespace().filter_map(|f| f.split_once('=')).collect(), log)
}

impl Report {
    /// Every report in `line`, and the text before the first (output of
    /// rank 0's trainer, which its wrapper copies, may end in a partial
    /// line). mpirun interleaves the wrappers' output at the writes it reads,
    /// so one line can carry reports of several ranks: a report ends where
    /// the next marker begins.
    pub fn split(line: &str) -> (&str, Vec<Report>) {
        let line = line.trim_end_matches(['\n', '\r']);
        let mut starts: Vec<usize> = MARKERS.iter().flat_map(|m| line.match_indices(m).map(|(at, _)| at)).collect();
        starts.sort_unstable();
        let ends = starts.iter().skip(1).copied().chain(std::iter::once(line.len()));
        let reports = starts.iter().zip(ends).filter_map(|(&at, end)| Report::parse(&line[at..end])).collect();
        (&line[..starts.first().copied().unwrap_or(line.len())], reports)
    }

    /// The report that `text` starts with.
    fn parse(text: &str) -> Option<Report> {
        let text = text.trim_end();
        for (marker, kind) in
            [(READY_MARKER, Report::Ready as fn(RankReady) -> Report), (STOPPING_MARKER, Report::Stopping)]
        {
            if let Some(rest) = text.strip_prefix(marker) {
                let (fields, _) = fields(rest);
                let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
                return Some(kind(RankReady { rank: get("rank")?.parse().ok()?, host: get("host")?.to_string() }));
            }
        }
        let (fields, log) = fields(text.strip_prefix(EXIT_MARKER)?);
        let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        Some(Report::Exit(RankExit {
            rank: get("rank")?.parse().ok()?,
            host: get("host")?.to_string(),
            code: get("code")?.parse().ok()?,
            signal: get("signal")?.parse().ok()?,
            at_ns: get("at")?.parse().ok()?,
            log: log?.to_string(),
        }))
    }
}

/// Writes a report line to stderr in one write(2), which a pipe keeps whole
/// (under PIPE_BUF): `eprintln!` writes the text and its newline apart, and
/// another rank's report read in between by mpirun joined the two on one
/// line, where only the first was seen (a lost "ready" kept a stop from
/// ever reaching the ranks).
pub fn emit(report: &str) {
    emit_to(&mut std::io::stderr().lock(), report);
}

fn emit_to(out: &mut impl std::io::Write, report: &str) {
    let _ = out.write_all(format!("{report}\n").as_bytes());
}

/// This machine's host name, as the reports name it.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_survive_the_trip_through_mpirun() {
        let exit = RankExit {
            rank: 3,
            host: "node2".into(),
            code: 137,
            signal: 9,
            at_ns: 1234,
            log: "/tmp/a b/rank-3.log".into(),
        };
        let split = |line: &str| Report::split(line).1;
        assert_eq!(split(&format!("{}\n", exit.line())), [Report::Exit(exit.clone())]);
        assert_eq!(exit.describe(), "rank 3 on node2 was killed by SIGKILL");
        let ready = RankReady { rank: 1, host: "n1".into() };
        let line = format!("partial trainer output{}", ready.line());
        assert_eq!(Report::split(&line), ("partial trainer output", vec![Report::Ready(ready.clone())]));
        let stopping = RankReady { rank: 2, host: "node1".into() };
        assert_eq!(split(&stopping.stopping_line()), [Report::Stopping(stopping)]);
        assert_eq!(Report::split("rank 3 said something"), ("rank 3 said something", vec![]));
        // Two ranks' reports that mpirun put on one line, the second an exit whose log path ends the line.
        let zero = RankReady { rank: 0, host: "n0".into() };
        let line = format!("{}{}{}\n", ready.line(), zero.line(), exit.line());
        assert_eq!(split(&line), [Report::Ready(ready), Report::Ready(zero), Report::Exit(exit)]);
    }

    /// Reports written by `emit` from several writers at once (as the
    /// wrappers on one node write to mpirun) into one pipe, between chunks
    /// of text without newlines (rank 0's trainer output): each report comes
    /// out whole. Written as `eprintln!` writes them (text, then newline),
    /// reports came out garbled within the first few thousand in every try:
    /// a chunk or another report lands between a report and its newline.
    #[test]
    fn reports_written_at_once_by_several_ranks_all_arrive() {
        use std::io::{BufRead, Write};
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fresh descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: each descriptor is owned by exactly one File from here on.
        let (read, write) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
        const EACH: u32 = 20_000;
        let writers: Vec<_> = (0..3u32)
            .map(|rank| {
                // Each writer has its own descriptor, as each process does: no lock is shared.
                let mut out = write.try_clone().unwrap();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        if rank == 0 && i % 3 == 0 {
                            let _ = out.write_all(b"epoch 001: | partial ");
                        }
                        emit_to(&mut out, &RankReady { rank, host: format!("h{i}") }.line());
                    }
                })
            })
            .collect();
        drop(write);
        let reader = std::thread::spawn(move || {
            let mut seen = [0u32; 3];
            for line in std::io::BufReader::new(read).lines() {
                for report in Report::split(&line.unwrap()).1 {
                    let Report::Ready(r) = report else { panic!("not a ready report") };
                    assert!(r.host.starts_with('h') && r.host[1..].parse::<u32>().is_ok(), "garbled: {r:?}");
                    seen[r.rank as usize] += 1;
                }
            }
            seen
        });
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(reader.join().unwrap(), [EACH; 3]);
    }
}
