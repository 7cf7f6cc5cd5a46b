//! The official SDKs that check what the relay sends: `tests/js` (CloudEvents, AsyncAPI), run
//! with Node. `scripts/js-tools.sh` installs their packages once (`npm ci`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/js/<script>` with `input` on stdin: its stdout, or a panic with its stderr (an
/// SDK refused the input).
pub fn run(script: &str, input: &[u8]) -> String {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let status = Command::new("bash")
            .arg(repo().join("scripts/js-tools.sh"))
            .status()
            .expect("run scripts/js-tools.sh");
        assert!(status.success(), "scripts/js-tools.sh failed");
    });
    let mut child = Command::new("node")
        .arg(repo().join("tests/js").join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (Node.js is one of the toolchains)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script} refused the input:\n{stderr}\n{stdout}");
    stdout.into_owned()
}
