//! The lines each rank's wrapper writes to stderr for the launcher: mpirun
//! carries them to `elfin launch`, which keeps them off the console and
//! learns from them when every rank can take a stop request and how each ended.

use crate::stop::signal_name;

const READY_MARKER: &str = "@elfin-rank-ready";
const EXIT_MARKER: &str = "@elfin-rank-exit";
const STOPPING_MARKER: &str = "@elfin-rank-stopping";

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
    /// A report anywhere in `line`: rank 0's wrapper also copies the
    /// trainer's output, so a report may follow a partial line of it.
    pub fn parse(line: &str) -> Option<Report> {
        let line = line.trim_end();
        for (marker, kind) in
            [(READY_MARKER, Report::Ready as fn(RankReady) -> Report), (STOPPING_MARKER, Report::Stopping)]
        {
            if let Some(at) = line.find(marker) {
                let (fields, _) = fields(&line[at + marker.len()..]);
                let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
                return Some(kind(RankReady { rank: get("rank")?.parse().ok()?, host: get("host")?.to_string() }));
            }
        }
        let at = line.find(EXIT_MARKER)?;
        let (fields, log) = fields(&line[at + EXIT_MARKER.len()..]);
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

    /// The text before the report on its line (output of rank 0's trainer), if any.
    pub fn text_before(line: &str) -> &str {
        let at = [READY_MARKER, STOPPING_MARKER, EXIT_MARKER]
            .iter()
            .filter_map(|m| line.find(m))
            .min()
            .unwrap_or(line.len());
        &line[..at]
    }
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
        assert_eq!(Report::parse(&format!("{}\n", exit.line())), Some(Report::Exit(exit.clone())));
        assert_eq!(exit.describe(), "rank 3 on node2 was killed by SIGKILL");
        let ready = RankReady { rank: 1, host: "n1".into() };
        let line = format!("partial trainer output{}", ready.line());
        assert_eq!(Report::parse(&line), Some(Report::Ready(ready)));
        assert_eq!(Report::text_before(&line), "partial trainer output");
        let stopping = RankReady { rank: 2, host: "node1".into() };
        assert_eq!(Report::parse(&stopping.stopping_line()), Some(Report::Stopping(stopping)));
        assert_eq!(Report::parse("rank 3 said something"), None);
    }
}
