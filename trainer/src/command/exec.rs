//! Running a user's training command: in its own process group (so a
//! timeout, or its own end, kills whatever it started too), with stdout and stderr read on
//! their own threads into bounded tails, killed at its timeout.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The most bytes of each stream kept (the end of it).
pub const TAIL_BYTES: usize = 16 * 1024;

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exited with status 0.
    pub success: bool,
    /// `exit status 3`, `killed by signal 9`, `killed after the 5 s timeout`.
    pub describe: String,
    pub seconds: f64,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `argv` with `env` added, `cwd` as working directory, killing its
/// process group after `timeout`. `Err` only when it cannot be started.
pub fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    timeout: Duration,
) -> std::io::Result<Exit> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("the command's argv is empty"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let started = Instant::now();
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().map(tail_reader);
    let stderr = child.stderr.take().map(tail_reader);
    let deadline = started + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            kill_group(child.id());
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever it started is ended with it, so the pipes close.
    kill_group(child.id());
    let join = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, stderr) = (join(stdout), join(stderr));
    let describe = if timed_out {
        format!("killed after the {:.1} s timeout", timeout.as_secs_f64())
    } else if let Some(code) = status.code() {
        format!("exit status {code}")
    } else {
        use std::os::unix::process::ExitStatusExt;
        format!("killed by signal {}", status.signal().unwrap_or(0))
    };
    Ok(Exit {
        success: !timed_out && status.success(),
        describe,
        seconds: started.elapsed().as_secs_f64(),
        stdout,
        stderr,
    })
}

/// SIGKILL to the command's process group, through `kill(1)` (the
/// workspace forbids `unsafe`, which `kill(2)` through libc needs). A
/// group already gone is fine.
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Reads a stream to its end on a thread, keeping the last [`TAIL_BYTES`].
fn tail_reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut tail: VecDeque<u8> = VecDeque::with_capacity(TAIL_BYTES);
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if tail.len() == TAIL_BYTES {
                    tail.pop_front();
                }
                tail.push_back(b);
            }
        }
        String::from_utf8_lossy(tail.make_contiguous()).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> Exit {
        let argv = ["sh", "-c", script].map(String::from);
        run(
            &argv,
            &BTreeMap::from([("QUIVER_X".to_string(), "x-value".to_string())]),
            None,
            Duration::from_millis(timeout_ms),
        )
        .unwrap()
    }

    #[test]
    fn captures_both_streams_and_the_status() {
        let e = sh(
            "echo progress; echo oops >&2; echo $QUIVER_X; exit 3",
            10_000,
        );
        assert!(!e.success);
        assert_eq!(e.describe, "exit status 3");
        assert_eq!(e.stdout, "progress\nx-value\n");
        assert_eq!(e.stderr, "oops\n");
        assert!(sh("true", 10_000).success);
    }

    #[test]
    fn a_hung_command_and_its_children_are_killed_at_the_timeout() {
        // The grandchild holds the pipes open: only killing the group ends it.
        let e = sh("echo started; sleep 30 & sleep 30; wait", 300);
        assert!(!e.success);
        assert!(e.describe.contains("timeout"), "{}", e.describe);
        assert_eq!(e.stdout, "started\n");
    }

    #[test]
    fn output_is_bounded_to_its_tail() {
        let e = sh(
            "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done",
            30_000,
        );
        assert!(e.success);
        assert!(e.stdout.len() <= TAIL_BYTES);
        assert!(e.stdout.ends_with("line-2999\n"));
        assert!(!e.stdout.contains("line-0\n"));
    }

    #[test]
    fn a_missing_program_cannot_start() {
        let argv = ["/nonexistent/quiver-train".to_string()];
        assert!(run(&argv, &BTreeMap::new(), None, Duration::from_secs(1)).is_err());
        assert!(run(&[], &BTreeMap::new(), None, Duration::from_secs(1)).is_err());
    }
}
